"""Which slices of an ordered series go into an example: uniform (the MedGemma reference), report-guided, all."""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_MAX_SLICES = 85

# "series 3, image 45", "series 3 image 45", "image 45", "img 45", "slice 45", "im 45", "image #45"
_NAMED = re.compile(r"(?:\bseries\s*#?\s*(\d+)\s*[,;:]?\s*)?\b(?:image|img|im|slice)\s*#?\s*(\d+)\b", re.IGNORECASE)
# "(45/120)": image 45 of 120
_FRACTION = re.compile(r"\(\s*(\d+)\s*/\s*(\d+)\s*\)")


def uniform_indices(n: int, max_slices: int = DEFAULT_MAX_SLICES) -> list[int]:
    """Indices into n ordered slices: all if n <= N, else round(i / N * (n - 1)) for i = 1..N (Python round)."""
    if n <= 0:
        return []
    if n <= max_slices:
        return list(range(n))
    return [round(i / max_slices * (n - 1)) for i in range(1, max_slices + 1)]


def slice_references(text: str) -> list[tuple[str | None, int]]:
    """(series number or None, image number) for every slice the text names, in order of mention."""
    refs: list[tuple[int, str | None, int]] = []
    for m in _NAMED.finditer(text or ""):
        refs.append((m.start(), m.group(1), int(m.group(2))))
    for m in _FRACTION.finditer(text or ""):
        refs.append((m.start(), None, int(m.group(1))))
    return [(series, number) for _, series, number in sorted(refs)]


def report_indices(text: str, instance_numbers: Sequence[int | None], series_number: str = "") -> list[int]:
    """Indices of the slices named in the report (by InstanceNumber, within this series), in slice order."""
    by_number: dict[int, int] = {}
    for index, number in enumerate(instance_numbers):
        if number is not None:
            by_number.setdefault(number, index)
    picked = set()
    for series, number in slice_references(text):
        if series is not None and series_number and series != str(series_number):
            continue
        if number in by_number:
            picked.add(by_number[number])
    return sorted(picked)
