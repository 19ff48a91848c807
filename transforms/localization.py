"""Localization targets in MedGemma 1.5's answer format: box_2d [y0, x0, y1, x1] on a 0-1000 grid."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

GRID = 1000


def box_answer(norm_boxes: np.ndarray, labels: Sequence[str]) -> str:
    """Normalized x0,y0,x1,y1 boxes in [0, 1] + labels -> JSON list of {"box_2d", "label"}."""
    b = np.asarray(norm_boxes, dtype=np.float64).reshape(-1, 4)
    if len(labels) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(labels)} labels")
    items = []
    for (x0, y0, x1, y1), label in zip(b, labels):
        grid = [int(round(v * GRID)) for v in (y0, x0, y1, x1)]
        items.append({"box_2d": grid, "label": str(label)})
    return json.dumps(items, ensure_ascii=False)
