"""Pad to a centred square, resize with Pillow BILINEAR, and map boxes through the same plan.

Pixel coordinates are continuous (a pixel spans [x, x+1)); boxes are [x0, y0, x1, y1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PadResize:
    """Source w×h, padded to side×side at (left, top) with fill 0, then resized to out×out."""

    src_width: int
    src_height: int
    side: int
    left: int
    top: int
    out: int

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.out / self.side

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in image_info['pad_resize']."""
        return {**asdict(self), "scale": self.scale}


def plan_pad_resize(width: int, height: int, out: int) -> PadResize:
    """The plan for a width×height image: side = max(w, h), left = (S-w)//2, top = (S-h)//2."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if out <= 0:
        raise ValueError(f"output size must be positive, got {out}")
    side = max(width, height)
    return PadResize(width, height, side, (side - width) // 2, (side - height) // 2, out)


def pad_and_resize(pixels: np.ndarray, out: int) -> tuple[Image.Image, PadResize]:
    """uint8 RGB (H, W, 3) or grey (H, W) -> (PIL RGB image out×out, plan): centred zero pad, BILINEAR resize.

    Grey is padded and resized as one channel, then replicated: bilinear works per channel,
    so this equals resizing the replicated RGB image, at a third of the cost.
    """
    grey = pixels.ndim == 2
    if pixels.dtype != np.uint8 or not (grey or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"expected uint8 (H, W, 3) or (H, W), got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    plan = plan_pad_resize(width, height, out)
    mode = "L" if grey else "RGB"
    src = Image.fromarray(np.ascontiguousarray(pixels), mode)
    if width != height:
        canvas = Image.new(mode, (plan.side, plan.side), 0)
        canvas.paste(src, (plan.left, plan.top))
        src = canvas
    if plan.side != out:
        src = src.resize((out, out), Image.Resampling.BILINEAR)
    return (src.convert("RGB") if grey else src), plan


def map_boxes(boxes: np.ndarray, plan: PadResize) -> np.ndarray:
    """Source-pixel boxes (N, 4) x0,y0,x1,y1 -> normalized [0, 1] boxes in the output frame."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = b + np.array([plan.left, plan.top, plan.left, plan.top], dtype=np.float64)
    return shifted / float(plan.side)


def validate_boxes(boxes: np.ndarray, width: int, height: int) -> str | None:
    """None if every box satisfies 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, else why not."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (x0, y0, x1, y1) in enumerate(b):
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            return f"box {i} has a non-finite coordinate"
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            return f"box {i} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is outside the {width}x{height} image or empty"
    return None


def map_boxes_to_pixels(boxes: np.ndarray, plan: PadResize) -> np.ndarray:
    """Source-pixel boxes (N, 4) -> output-pixel boxes: (x + left) * out / side, exact for integers."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = b + np.array([plan.left, plan.top, plan.left, plan.top], dtype=np.float64)
    return shifted * float(plan.out) / float(plan.side)
