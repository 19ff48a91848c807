"""Intensity windows: CT Hounsfield windows to RGB, DICOM VOI windows, MR min-max.

Every function takes float values in physical units (HU for CT, stored units after the
modality LUT otherwise) and returns uint8 in [0, 255], computed in float64 (multiply by 255
before dividing, so exact halves stay exact) and rounded half to even (numpy's and
Python's rule). Never cast HU to an unsigned type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medprep.transforms.option_fields import option


@dataclass(frozen=True)
class Window:
    """A linear window [low, high] in physical units (HU for CT)."""

    low: float
    high: float

    @classmethod
    def from_level_width(cls, level: float, width: float) -> Window:
        """Window from level (centre) and width: [level - width/2, level + width/2]."""
        return cls(level - width / 2.0, level + width / 2.0)

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"window high ({self.high}) must exceed low ({self.low})")


# The MedGemma reference presets (../shared/DESIGN.md, "Processing").
CT_PRESETS: dict[str, tuple[Window, Window, Window]] = {
    # MedGemma 1.5 serving code: R wide, G soft tissue, B brain.
    "medgemma-1.5": (Window(-1024, 1024), Window(-135, 215), Window(0, 80)),
    # MedGemma 1 technical report: bone/lung, soft tissue, brain as level/width.
    "medgemma-1": (
        Window.from_level_width(-100, 2250),
        Window.from_level_width(40, 350),
        Window.from_level_width(40, 80),
    ),
}
DEFAULT_CT_PRESET = "medgemma-1.5"  # the MedGemma 1.5 serving code's windows


def parse_ct_windows(text: str) -> tuple[tuple[float, float], ...]:
    """'lo,hi;lo,hi;lo,hi' (HU, R;G;B) -> three (low, high) pairs, each a valid Window."""
    try:
        pairs = tuple(tuple(float(v) for v in part.split(",")) for part in text.split(";"))
        if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
            raise ValueError
        for lo, hi in pairs:
            Window(lo, hi)
    except ValueError:
        raise ValueError(f"expected 'lo,hi;lo,hi;lo,hi' in HU with hi > lo, got {text!r}") from None
    return pairs  # type: ignore[return-value]


@dataclass(frozen=True)
class CtWindowOptions:
    """The three CT windows (R, G, B): a preset by name, or custom (low, high) pairs in HU that override it."""

    ct_preset: str = option(
        DEFAULT_CT_PRESET, f"CT windows preset (default {DEFAULT_CT_PRESET})", choices=sorted(CT_PRESETS)
    )
    ct_windows: tuple[tuple[float, float], ...] = option(
        (), "custom CT windows 'lo,hi;lo,hi;lo,hi' in HU (R;G;B), overrides --ct_preset", parse_ct_windows
    )

    def windows(self) -> tuple[Window, Window, Window]:
        """The windows in HU, (R, G, B)."""
        if self.ct_windows:
            low_high = [Window(lo, hi) for lo, hi in self.ct_windows]
            return low_high[0], low_high[1], low_high[2]
        return CT_PRESETS[self.ct_preset]


def describe_windows(windows: Sequence[Window]) -> str:
    """'ct_windows [lo,hi] [lo,hi] [lo,hi]', as recorded in image_info['intensity']."""
    return "ct_windows " + " ".join(f"[{w.low:g},{w.high:g}]" for w in windows)


def window_to_uint8(values: np.ndarray, window: Window) -> np.ndarray:
    """Physical values -> uint8 [0, 255]: clip to [low, high], scale, round half to even."""
    v = np.asarray(values, dtype=np.float64)
    scaled = (np.clip(v, window.low, window.high) - window.low) * 255.0 / (window.high - window.low)
    return np.rint(scaled).astype(np.uint8)


def ct_to_rgb(hu: np.ndarray, windows: Sequence[Window] = CT_PRESETS[DEFAULT_CT_PRESET]) -> np.ndarray:
    """HU array (H, W) -> uint8 (H, W, 3), one window per channel (R, G, B)."""
    if len(windows) != 3:
        raise ValueError("CT windowing needs exactly three windows (R, G, B)")
    out = np.empty(np.shape(hu) + (3,), dtype=np.uint8)
    for channel, window in enumerate(windows):
        out[..., channel] = window_to_uint8(hu, window)
    return out


def minmax_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Values -> uint8 [0, 255] by (v - low)/(high - low), low/high default to min/max.

    A constant input (high == low) maps to 255 everywhere, as the MedGemma MR reference does.
    """
    v = np.asarray(values, dtype=np.float64)
    lo = float(v.min()) if low is None else float(low)
    hi = float(v.max()) if high is None else float(high)
    if hi <= lo:
        return np.full(v.shape, 255, dtype=np.uint8)
    scaled = (np.clip(v, lo, hi) - lo) * 255.0 / (hi - lo)
    return np.rint(scaled).astype(np.uint8)


def percentile_to_uint8(values: np.ndarray, lower_pct: float, upper_pct: float) -> np.ndarray:
    """Values -> uint8 [0, 255] between the given percentiles (0-100) of the values."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [lower_pct, upper_pct])
    return minmax_to_uint8(values, lo, hi)


def voi_linear_to_uint8(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) of stored-unit values -> uint8 [0, 255].

    `function` is the VOILUTFunction: LINEAR (default), LINEAR_EXACT or SIGMOID.
    """
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"VOI window width must be > 0, got {width}")
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"VOI window width must be > 0, got {width}")
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    elif function == "LINEAR":
        if width < 1:
            raise ValueError(f"VOI LINEAR window width must be >= 1, got {width}")
        if width == 1:  # the standard's degenerate case: a threshold at center - 0.5
            y = np.where(x <= center - 0.5, 0.0, 255.0)
        else:
            y = np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0) * 255.0
    else:
        raise ValueError(f"unsupported VOILUTFunction {function!r}")
    return np.rint(y).astype(np.uint8)


def invert_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 -> uint8, 255 - v (MONOCHROME1 display inversion)."""
    inverted: np.ndarray = np.subtract(255, img, dtype=np.uint8)
    return inverted
