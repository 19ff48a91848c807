"""Patch grids on a slide: level-0 coordinates, tissue filtering, seeded sampling in tile-row order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medprep.transforms.tissue import GREY_RANGE, cell_fractions, cell_mean_grey


@dataclass(frozen=True)
class Patch:
    """A patch's level-0 box (x, y, size) and the tissue measure that admitted it."""

    x: int
    y: int
    size0: float  # side in level-0 pixels
    tissue: float  # tissue fraction (otsu) or mean grey (mean_grey)


def grid(width0: int, height0: int, patch_size: int, stride: int, mpp0: float, target_mpp: float) -> np.ndarray:
    """Level-0 boxes (N, 4) x0,y0,x1,y1 of every full patch of `patch_size` px at target_mpp, row-major."""
    factor = target_mpp / mpp0  # level-0 pixels per output pixel
    side, step = patch_size * factor, stride * factor
    xs = np.arange(0, width0 - side + 1e-9, step)
    ys = np.arange(0, height0 - side + 1e-9, step)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([xx.ravel(), yy.ravel(), xx.ravel() + side, yy.ravel() + side], axis=1)
    return np.floor(boxes * 1e6 + 0.5) / 1e6  # tame float noise in the coordinates


def select_patches(
    boxes0: np.ndarray,
    thumb: np.ndarray,
    thumb_downsample: float,
    method: str = "mean_grey",
    mask: np.ndarray | None = None,
    min_tissue: float = 0.5,
    grey_range: tuple[float, float] = GREY_RANGE,
) -> list[Patch]:
    """Patches whose thumbnail footprint is tissue: mean grey in grey_range (reference) or mask fraction
    >= min_tissue."""
    boxes_t = np.asarray(boxes0, dtype=np.float64) / thumb_downsample
    if method == "mean_grey":
        measure = cell_mean_grey(thumb, boxes_t)
        keep = (measure >= grey_range[0]) & (measure <= grey_range[1])
    elif method == "otsu":
        if mask is None:
            raise ValueError("the otsu method needs a mask")
        measure = cell_fractions(mask, boxes_t)
        keep = measure >= min_tissue
    else:
        raise ValueError(f"unknown tissue method {method!r}")
    return [
        Patch(int(round(b[0])), int(round(b[1])), float(b[2] - b[0]), round(float(m), 6))
        for b, m, k in zip(boxes0, measure, keep)
        if k
    ]


def sample_patches(patches: list[Patch], max_patches: int, seed: int) -> list[Patch]:
    """At most max_patches, drawn without replacement with `seed`, returned in tile-row order (y, x)."""
    if len(patches) > max_patches:
        picked = np.random.default_rng(seed).choice(len(patches), size=max_patches, replace=False)
        patches = [patches[i] for i in picked]
    return sorted(patches, key=lambda p: (p.y, p.x))
