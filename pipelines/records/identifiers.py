"""Identifier values and where they occur in a record: the pipeline's own check, and verify's matcher.

The pipeline reads every header anyway; when it assembles a record it checks the record's text
fields against the identifier values of that record's own headers (and its patient id) with
`record_identifier_hits`. A record that would carry one is not written: its input becomes one
`privacy` error line whose message starts with IDENTIFIER_HIT (summary.json counts them as
`identifier_hits`), so `medprep verify` never has to read a source header again.

Matching (shared with verify's `IdentifierSet`): values are trimmed of non-alphanumeric edges and
compared ignoring case at word edges ('JANE' is found in 'DOE^JANE,' but not in 'JANET'); values
shorter than MIN_PHI_LENGTH, and all-digit values shorter than MIN_DIGITS, are too unspecific to look for.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any, cast

from medprep.schemas.fields import FIELD_BY_NAME, FIELD_NAMES
from medprep.transforms.dicom_io import PHI_KEYWORDS

MIN_PHI_LENGTH = 4  # shorter values ("1", "M", "p1") would match everywhere
MIN_DIGITS = 6  # an all-digit value shorter than this ("2020", "0001", "1792") is a year, counter or coordinate
IDENTIFIER_HIT = "identifier in record"  # the message prefix of the error line of a refused record
_ALNUM_RUN = re.compile(r"[^\W_]+")
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def clean_value(value: object) -> str:
    """A value as matched: trimmed of non-alphanumeric edges ('(MRN-1)' -> 'MRN-1')."""
    return _EDGES.sub("", str(value or "").strip())


def worth_checking(value: str) -> bool:
    """True when a (cleaned) value is specific enough to look for: 4+ characters, all-digit ones 6+."""
    return len(value) >= MIN_PHI_LENGTH and (not value.isdigit() or len(value) >= MIN_DIGITS)


class IdentifierSet:
    """Identifier values (case-insensitive) with a description each; finds them in text at word edges.

    Lookup is by the value's first alphanumeric run, intersected with the text's runs, so a text is
    scanned once whatever the number of values. `kinds` lists the kinds `counts` reports.
    """

    def __init__(self, kinds: tuple[str, ...] = ()):
        self.kinds = kinds
        self.values: dict[str, tuple[str, str]] = {}  # casefolded value -> (description, kind)
        self._by_run: dict[str, list[str]] = defaultdict(list)
        self._patterns: dict[str, re.Pattern[str]] = {}

    def add(self, value: object, what: str, kind: str) -> None:
        """Add one value (ignored when not worth checking or already known); `what` never holds the value."""
        text = clean_value(value)
        key = text.casefold()
        if not worth_checking(text) or key in self.values:
            return
        self.values[key] = (what, kind)
        first_run = cast(re.Match[str], _ALNUM_RUN.match(key))  # a cleaned value starts with a letter or digit
        self._by_run[first_run.group(0)].append(key)

    def __len__(self) -> int:
        return len(self.values)

    def counts(self) -> dict[str, int]:
        """How many values of each kind are checked."""
        out = dict.fromkeys(self.kinds, 0)
        for _, kind in self.values.values():
            out[kind] = out.get(kind, 0) + 1
        return out

    def find(
        self, text: str, skip: frozenset[str] = frozenset(), skip_kinds: tuple[str, ...] = ()
    ) -> list[tuple[str, str]]:
        """(description, kind) of every value in text, except the values in `skip` and kinds in `skip_kinds`."""
        if not text or not self.values:
            return []
        folded = text.casefold()
        found = []
        for run in set(_ALNUM_RUN.findall(folded)) & self._by_run.keys():
            for key in self._by_run[run]:
                what, kind = self.values[key]
                if key in skip or kind in skip_kinds:
                    continue
                pattern = self._patterns.get(key)
                if pattern is None:
                    pattern = self._patterns[key] = re.compile(r"(?<![^\W_])" + re.escape(key) + r"(?![^\W_])")
                if pattern.search(folded):
                    found.append((what, kind))
        return sorted(found)


def json_value_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, text) of every string inside a JSON value ('config.input', 'messages[0].content[1].text')."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from json_value_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_value_strings(v, f"{path}[{i}]")


def _json_text_strings(text: str, path: str) -> Iterator[tuple[str, str]]:
    """A JSON text's strings (decoded, so escaped names match), or the text itself when it is not JSON."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    yield from json_value_strings(value, path)


def record_strings(rec: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, text) of every text a record holds: str fields, list items, and the strings inside JSON fields."""
    for name in FIELD_NAMES:
        kind = FIELD_BY_NAME[name].kind
        if kind == "str":
            yield from (_json_text_strings(rec[name], name) if name == "messages" else [(name, rec[name])])
        elif kind == "str_list":
            for i, item in enumerate(rec[name]):
                if name == "image_info":
                    yield from _json_text_strings(item, f"{name}[{i}]")
                else:
                    yield f"{name}[{i}]", item


def header_values(identifiers: Mapping[str, str], patient_id: str = "") -> IdentifierSet:
    """The identifier values of one item: its headers' PHI_KEYWORDS values (person names also part by part,
    'DOE^JANE' -> 'JANE') and its patient id; each described by its keyword."""
    found = IdentifierSet()
    for keyword in PHI_KEYWORDS:
        text = str(identifiers.get(keyword, "") or "").strip()
        found.add(text, keyword, "dicom_header")
        if keyword.endswith("Name") and "^" in text:
            for part in text.split("^"):
                found.add(part, keyword, "dicom_header")
    found.add(patient_id, "patient id", "patient_id")
    return found


def record_identifier_hits(
    record: Mapping[str, Any], identifiers: Mapping[str, str], patient_id: str = ""
) -> list[tuple[str, str]]:
    """(what, field) for every identifier value of the record's own headers (and patient id) that one of its
    fields holds; [] for a record that can be written. Pure: no I/O, the values are never returned."""
    values = header_values(identifiers, patient_id)
    if not len(values):
        return []
    hits: dict[tuple[str, str], None] = {}
    for field, text in record_strings(record):
        for what, _ in values.find(text):
            hits.setdefault((what, field))
    return list(hits)


def identifier_hit_message(hits: list[tuple[str, str]]) -> str:
    """The error line's message for a refused record (names keywords and fields, never a value)."""
    shown = ", ".join(f"{what} in field {field}" for what, field in hits[:3])
    more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
    return (
        f"{IDENTIFIER_HIT}: the record would carry its own {shown}{more}; not written "
        "(--scrub_text replaces identifiers in prompt, text, label and box_labels)"
    )
