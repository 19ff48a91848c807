"""Tissue masks on a low-resolution slide thumbnail (RGB uint8): the reference grey rule, or Otsu on saturation.

`mean_grey` (the MedGemma 1.5 pathology reference, EZ-WSI): a patch is tissue when the mean grey
of its thumbnail footprint lies in [1, 204] (white background and pure black excluded).
`otsu` (alternative): saturation, blurred, thresholded by Otsu, closed; pen marks (saturated
blue/green/black ink) and black borders removed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

GREY_RANGE = (1.0, 204.0)


def grey(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> float grey (ITU-R 601 luma, 0-255)."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (0-255): maximizes the between-class variance."""
    hist = np.bincount(values.ravel().astype(np.uint8), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of typical pen ink: blue, green, or dark marker (bool)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    blue = (b > r + 40) & (b > g + 20)
    green = (g > r + 30) & (g > b + 10) & (r < 150)
    dark = (r < 60) & (g < 60) & (b < 60)
    return blue | green | dark


def otsu_saturation_mask(rgb: np.ndarray, blur: float = 1.0, close: int = 3, remove_pen: bool = True) -> np.ndarray:
    """Tissue (bool) by Otsu on HSV saturation after a Gaussian blur, then a closing; pen and black removed."""
    sat = np.asarray(Image.fromarray(rgb).convert("HSV"))[..., 1]
    if blur > 0:
        sat = np.asarray(Image.fromarray(sat).filter(ImageFilter.GaussianBlur(blur)))
    mask = sat > otsu_threshold(sat)
    if close > 1:
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        img = img.filter(ImageFilter.MaxFilter(close)).filter(ImageFilter.MinFilter(close))
        mask = np.asarray(img) > 0
    if remove_pen:
        mask &= ~pen_mask(rgb)
    return mask


def _box_means(values: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of a 2D array inside each box (N, 4) x0,y0,x1,y1 in its pixels (clipped; integral image)."""
    integral = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = values.shape
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, w).astype(int)
    y0 = np.clip(np.floor(b[:, 1]), 0, h).astype(int)
    x1 = np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y1 = np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    means: np.ndarray = (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) / area
    return means


def cell_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction (0-1) of True pixels of `mask` inside each box (N, 4) x0,y0,x1,y1 in mask pixels."""
    return _box_means(mask.astype(np.int64), boxes)


def cell_mean_grey(rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean grey (0-255) of the thumbnail inside each box (N, 4) in thumbnail pixels."""
    return _box_means(grey(rgb.astype(np.float64)), boxes)
