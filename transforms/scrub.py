"""Report text scrubbing for obvious identifiers: known header values, names, dates, MRN-like ids.

Replacements: [NAME], [ID], [DATE]. Not a de-identification guarantee: it removes what it can
see (the item's own header identifiers and common patterns) and counts what it replaced.
"""
from __future__ import annotations

import re
from typing import Iterable

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE_PATTERNS = [
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),                       # 2021-03-04
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),                     # 03/04/2021, 4.3.21
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\s*,?\s*\d{{2,4}}\b", re.IGNORECASE),  # 4 March 2021
    re.compile(rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?\s*,?\s*\d{{4}}\b", re.IGNORECASE),   # March 4, 2021
]
_LABELLED_ID = re.compile(r"\b(?:MRN|MR\s*#|medical record(?: number)?|patient id|accession(?: number| no\.?)?|acc\s*#)"
                          r"\s*[:#]?\s*[A-Z0-9][A-Z0-9-]{3,}\b", re.IGNORECASE)
_LONG_NUMBER = re.compile(r"\b\d{7,}\b")


def scrub_text(text: str, identifiers: Iterable[str] = (), names: Iterable[str] = ()) -> tuple[str, dict]:
    """text -> (scrubbed text, {'name': n, 'id': n, 'date': n}); identifiers/names come from the item's header."""
    counts = {"name": 0, "id": 0, "date": 0}
    if not text:
        return text, counts
    for value in sorted({v.strip() for v in identifiers if v and len(v.strip()) >= 3}, key=len, reverse=True):
        text, n = re.subn(re.escape(value), "[ID]", text, flags=re.IGNORECASE)
        counts["id"] += n
    parts = {p.strip() for name in names for p in re.split(r"[\^,\s]+", name or "") if len(p.strip()) >= 2}
    for part in sorted(parts, key=len, reverse=True):
        text, n = re.subn(rf"\b{re.escape(part)}\b", "[NAME]", text, flags=re.IGNORECASE)
        counts["name"] += n
    text, n = _LABELLED_ID.subn("[ID]", text)
    counts["id"] += n
    for pattern in _DATE_PATTERNS:
        text, n = pattern.subn("[DATE]", text)
        counts["date"] += n
    text, n = _LONG_NUMBER.subn("[ID]", text)
    counts["id"] += n
    return text, counts
