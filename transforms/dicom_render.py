"""DICOM dataset -> display RGB uint8, by modality: CT windows, MR min-max, VOI for radiographs.

Units: CT in Hounsfield units after the modality LUT; other monochrome images in the
modality LUT's output units; colour images are passed through as RGB uint8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from medprep.transforms.dicom_io import header_identifiers
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.formats import DEFAULT_MAX_PIXELS
from medprep.transforms.option_fields import int_in, option
from medprep.transforms.pixel_decode import decode_pixels
from medprep.transforms.windowing import (
    CT_PRESETS,
    DEFAULT_CT_PRESET,
    Window,
    ct_to_rgb,
    describe_windows,
    invert_uint8,
    minmax_to_uint8,
    voi_linear_to_uint8,
)

# Cross-sectional modalities rendered by min-max (one slice here; per volume in series code).
MINMAX_MODALITIES = frozenset({"MR", "PT", "NM"})


@dataclass(frozen=True)
class RenderOptions:
    """Decoding limits and rendering: the pixel-count limit, and CT's windows (R, G, B) for monochrome DICOM."""

    ct_windows: tuple[Window, Window, Window] = CT_PRESETS[DEFAULT_CT_PRESET]
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this (default 2e8)", int_in(1))
    frame: int = 0
    value_range: tuple[float, float] | None = None  # min-max modalities: a per-volume range instead of per-frame


@dataclass
class Rendered:
    """A rendered frame, uint8 RGB (H, W, 3) or grey (H, W), its non-identifying info and raw identifiers.

    Grey stays single-channel until after the resize (3× less work; bilinear is per channel,
    so replicating afterwards gives the same bytes); `rgb` gives the (H, W, 3) view.
    """

    pixels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)  # PatientID, StudyInstanceUID: hash before use

    @property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return self.pixels if self.pixels.ndim == 3 else np.repeat(self.pixels[..., None], 3, axis=2)


def int_tag(ds: Dataset, keyword: str, default: int) -> int:
    """An integer header value, `default` when absent; ItemError('decode') naming the tag when malformed."""
    try:
        value = ds.get(keyword, None)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        raise ItemError("decode", f"invalid {keyword} value {ds.get(keyword)!r} in the DICOM header") from None


def _transfer_syntax_name(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return getattr(uid, "name", str(uid)) if uid is not None else "unknown transfer syntax"


def _check_pixel_budget(ds: Dataset, max_pixels: int) -> None:
    rows, cols = int_tag(ds, "Rows", 0), int_tag(ds, "Columns", 0)
    frames = int_tag(ds, "NumberOfFrames", 1)
    if rows <= 0 or cols <= 0:
        raise ItemError("decode", f"DICOM has no valid Rows/Columns ({rows}x{cols})")
    if rows * cols * frames > max_pixels:
        raise ItemError(
            "decode",
            f"DICOM declares {cols}x{rows}x{frames} pixels, above the limit of {max_pixels}",
        )


def decode_frame(ds: Dataset, frame: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Stored pixel values of one frame: (H, W) or (H, W, 3) for colour (RGB after YBR)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ItemError("decode", "DICOM object has no pixel data (7FE0,0010)")
    _check_pixel_budget(ds, max_pixels)
    frames = int_tag(ds, "NumberOfFrames", 1)
    if not 0 <= frame < frames:
        raise ItemError("decode", f"frame {frame} requested, DICOM has {frames} frame(s)")
    try:
        arr = decode_pixels(ds, frame if frames > 1 else None)
    except ItemError:
        raise
    except Exception as exc:
        raise ItemError(
            "decode",
            f"cannot decode pixel data ({_transfer_syntax_name(ds)}): {type(exc).__name__}: {exc}",
        ) from None
    samples = int_tag(ds, "SamplesPerPixel", 1)
    if samples == 1 and arr.ndim != 2 or samples == 3 and arr.ndim != 3:
        raise ItemError("decode", f"unexpected pixel array shape {arr.shape} for {samples} sample(s)/pixel")
    return arr


def _color_to_uint8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype.itemsize > 1 else 8
    else:
        bits = int_tag(ds, "BitsStored", 8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ItemError("decode", f"colour image has shape {arr.shape}, expected (H, W, 3)")
    if bits <= 8 and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    scaled: np.ndarray = np.rint(arr.astype(np.float64) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    return scaled


def _voi_to_uint8(
    ds: Dataset, values: np.ndarray, value_range: Callable[[], tuple[float, float]]
) -> tuple[np.ndarray, str]:
    """Radiograph display: first VOI LUT or window from the header, else min-max over value_range()."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2])
        out = apply_voi(values, ds, index=0).astype(np.float64)
        return np.rint(np.clip(out * (255.0 / (2**lut_bits - 1)), 0, 255)).astype(np.uint8), "voi_lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            return voi_linear_to_uint8(values, center, width, function), f"window c={center:g} w={width:g}"
        except ValueError:
            pass  # an invalid header window: fall back to min-max, recorded in info
    return minmax_to_uint8(values, *value_range()), "minmax"


def frame_rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) from an Enhanced object's functional groups, or None (top-level LUT applies)."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return None
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and index < len(seq):
            pvt = seq[index].get("PixelValueTransformationSequence")
            if pvt:
                item = pvt[0]
                return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    return None


def _modality_values(stored: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    rescale = frame_rescale(ds, frame)
    if rescale is None:
        return apply_modality_lut(stored, ds).astype(np.float64, copy=False)
    slope, intercept = rescale
    return stored.astype(np.float64) * slope + intercept


class StoredValues:
    """The modality-LUT values of a frame, as a lookup table when stored values are <= 16-bit integers.

    Rendering then evaluates the same float64 arithmetic once per representable stored value
    (at most 65,536) and indexes the table: identical results, far fewer operations.
    """

    def __init__(self, arr: np.ndarray, ds: Dataset, frame: int = 0):
        if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
            unsigned = np.uint8 if arr.dtype.itemsize == 1 else np.uint16
            domain = np.arange(np.iinfo(unsigned).max + 1, dtype=unsigned).view(arr.dtype)
            self.index: np.ndarray | None = arr.view(unsigned)
            self.values = _modality_values(domain, ds, frame)
        else:
            self.index = None
            self.values = _modality_values(arr, ds, frame)

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct values present in the frame, their pixel counts)."""
        if self.index is None:
            return np.unique(self.values, return_counts=True)
        counts = np.bincount(self.index.ravel(), minlength=self.values.shape[0])
        present = counts > 0
        values, counts = self.values[present], counts[present]
        order = np.argsort(values, kind="stable")
        return values[order], counts[order]

    def value_range(self) -> tuple[float, float]:
        """(min, max) of the values actually present in the frame."""
        if self.index is None:
            return float(self.values.min()), float(self.values.max())
        present = self.values[np.bincount(self.index.ravel(), minlength=self.values.shape[0]) > 0]
        return float(present.min()), float(present.max())

    def take(self, table: np.ndarray) -> np.ndarray:
        """Per-value results (a table over `values`) -> per-pixel results."""
        return table if self.index is None else table[self.index]


@dataclass(frozen=True)
class ModalityProfile:
    """How one modality's stored values (after the modality LUT: HU for CT) become uint8: a per-value table
    (grey, or RGB for CT's three windows) and a description for image_info; MONOCHROME1 is inverted after it
    unless the profile maps to RGB itself."""

    to_uint8: Callable[[Dataset, StoredValues, RenderOptions], tuple[np.ndarray, str]]
    inverts_monochrome1: bool = True


def _ct_windows(ds: Dataset, stored: StoredValues, options: RenderOptions) -> tuple[np.ndarray, str]:
    """CT: three HU windows as R, G, B."""
    return ct_to_rgb(stored.values, options.ct_windows), describe_windows(options.ct_windows)


def _min_max(ds: Dataset, stored: StoredValues, options: RenderOptions) -> tuple[np.ndarray, str]:
    """MR, PET, NM: min-max over the volume when its range is given (series), else over the frame."""
    if options.value_range is not None:
        return minmax_to_uint8(stored.values, *options.value_range), "minmax(volume)"
    return minmax_to_uint8(stored.values, *stored.value_range()), "minmax"


def _header_voi(ds: Dataset, stored: StoredValues, options: RenderOptions) -> tuple[np.ndarray, str]:
    """Projection radiographs and the rest: the header's first VOI LUT or window, else min-max."""
    return _voi_to_uint8(ds, stored.values, stored.value_range)


# Modality -> profile. A new modality is a function plus one line here (or register_modality).
MODALITY_PROFILES: dict[str, ModalityProfile] = {
    "CT": ModalityProfile(_ct_windows, inverts_monochrome1=False),
    **{m: ModalityProfile(_min_max) for m in sorted(MINMAX_MODALITIES)},
}
DEFAULT_PROFILE = ModalityProfile(_header_voi)


def register_modality(modality: str, profile: ModalityProfile) -> None:
    """Use `profile` for DICOM Modality `modality` (upper case), replacing any profile it had."""
    MODALITY_PROFILES[modality.upper()] = profile


def render_dataset(ds: Dataset, options: RenderOptions = RenderOptions()) -> Rendered:
    """One DICOM frame -> RGB uint8 (H, W, 3) for display/model input, with its info."""
    with stage("decode"):  # malformed headers surface as decode errors, never bare exceptions
        return _render(ds, options)


def _render(ds: Dataset, options: RenderOptions) -> Rendered:
    arr = decode_frame(ds, options.frame, options.max_pixels)
    modality = str(ds.get("Modality", "") or "OT").upper()
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    info: dict[str, Any] = {
        "format": "dicom",
        "modality": modality,
        "photometric": photometric,
        "rows": int(arr.shape[0]),
        "columns": int(arr.shape[1]),
        "bits_stored": int_tag(ds, "BitsStored", 8),
        "transfer_syntax": _transfer_syntax_name(ds),
        "frames": int_tag(ds, "NumberOfFrames", 1),
        "frame": options.frame,
    }
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        pixels = _color_to_uint8(ds, arr)
        info["intensity"] = "color"
    else:
        stored = StoredValues(arr, ds, options.frame)
        profile = MODALITY_PROFILES.get(modality, DEFAULT_PROFILE)
        table, how = profile.to_uint8(ds, stored, options)
        if photometric == "MONOCHROME1" and profile.inverts_monochrome1:
            table = invert_uint8(table)
            how += " inverted(MONOCHROME1)"
        info["intensity"] = how
        pixels = stored.take(table)
    identifiers = header_identifiers(ds)
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        info["burned_in_annotation"] = True
    return Rendered(pixels=pixels, info=info, identifiers=identifiers)
