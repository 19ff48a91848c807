"""Pyramid level choice for a target resolution (µm per pixel) and the resize that follows it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from medprep.transforms.errors import ItemError


@dataclass(frozen=True)
class LevelChoice:
    """Read `level` (level_mpp µm/px) and resize by `scale` (= level_mpp / target_mpp) to reach the target."""

    level: int
    level_mpp: float
    target_mpp: float

    @property
    def scale(self) -> float:
        """Output pixels per level pixel (< 1 downsamples, 1 reads as is, > 1 upsamples)."""
        return self.level_mpp / self.target_mpp


def choose_level(level_mpps: Sequence[float | None], target_mpp: float, tolerance: float = 0.02) -> LevelChoice:
    """The coarsest level at least as fine as the target (within `tolerance`), so patches are only
    ever downsampled; level 0 (upsampled) when the target is finer than the slide."""
    if target_mpp <= 0:
        raise ItemError("transform", f"target resolution must be > 0 µm/px, got {target_mpp}")
    if not level_mpps or any(m is None or m <= 0 for m in level_mpps):
        raise ItemError("transform", "the slide has no usable resolution (µm/px) for its levels; pass --assume_mpp")
    mpps = cast(Sequence[float], level_mpps)  # none is None (checked above)
    fine_enough = [i for i, m in enumerate(mpps) if m <= target_mpp * (1 + tolerance)]
    level = max(fine_enough, key=lambda i: mpps[i]) if fine_enough else 0
    return LevelChoice(level, float(mpps[level]), float(target_mpp))
