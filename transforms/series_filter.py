"""Series filters: comma-separated conditions on series attributes, all of which must hold.

    SeriesDescription~axial      regex search, case-insensitive      (!~ : must not match)
    SliceThickness<=2.5          numeric comparison: < <= > >= = !=
    Modality=CT                  string equality, case-insensitive (for non-numbers)
Attributes: SeriesDescription, ImageType (values joined by '\\'), SliceThickness, Modality, SeriesNumber.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ATTRIBUTES = ("SeriesDescription", "ImageType", "SliceThickness", "Modality", "SeriesNumber")
_CONDITION = re.compile(r"^\s*(\w+)\s*(!~|~|<=|>=|!=|<|>|=)\s*(.*?)\s*$")
_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Condition:
    """One `attribute op value` test."""

    attribute: str
    op: str
    value: str

    def holds(self, attrs: dict[str, Any]) -> bool:
        """True if the series' attributes satisfy the condition (a missing attribute fails it)."""
        actual = attrs.get(self.attribute)
        if self.op in ("~", "!~"):
            found = actual is not None and re.search(self.value, str(actual), re.IGNORECASE) is not None
            return found if self.op == "~" else not found
        if actual is None or actual == "":
            return False
        try:
            return _NUMERIC[self.op](float(actual), float(self.value))
        except ValueError:
            if self.op not in ("=", "!="):
                return False
            equal = str(actual).casefold() == self.value.casefold()
            return equal if self.op == "=" else not equal


def parse_filter(text: str) -> tuple[Condition, ...]:
    """'A~x, B<=2' -> conditions; ValueError naming the bad part."""
    conditions = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _CONDITION.match(part)
        if not m:
            raise ValueError(f"cannot parse condition {part.strip()!r} (use Attribute~regex, Attribute<=number …)")
        attribute, op, value = m.groups()
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
        if op in ("~", "!~"):
            re.compile(value)
        conditions.append(Condition(attribute, op, value))
    return tuple(conditions)


def matches(conditions: tuple[Condition, ...], attrs: dict[str, Any]) -> bool:
    """All conditions hold."""
    return all(c.holds(attrs) for c in conditions)
