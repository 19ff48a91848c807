"""Every DICOM parse in medprep, with one error model, and the header identifiers defined once.

The inference API and the pipelines read DICOM only through these functions, so the same file
fails the same way through both:
- a whole instance that pydicom cannot parse is ItemError('decode', "not a readable DICOM file: …");
- a header that is not DICOM, not an image, or unreadable is None (`image_header`): a file among
  many is skipped and counted, and an input with no image left is ItemError('read', no_series(n)).
Pixel data is decoded later (dicom_render.decode_frame), also as ItemError('decode', …).
"""

from __future__ import annotations

import io
import warnings
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset

from medprep.transforms.errors import ItemError
from medprep.transforms.formats import detect_format

SNIFF_BYTES = 1024  # enough for the preamble and 'DICM' (detect_format reads 512)

# Header identifiers: keyword -> how scrubbing matches its value in free text ('id': the whole value,
# 'name': each part of a person name). verify looks for all of them in the outputs, scrubbing uses all
# of them, in this order.
HEADER_IDENTIFIERS = {
    "PatientName": "name",
    "PatientID": "id",
    "PatientBirthDate": "id",
    "AccessionNumber": "id",
    "InstitutionName": "id",
    "OperatorsName": "name",
    "ReferringPhysicianName": "name",
    "OtherPatientIDs": "id",
    "PerformingPhysicianName": "name",
}
PHI_KEYWORDS = tuple(HEADER_IDENTIFIERS)
ID_KEYWORDS = tuple(k for k, kind in HEADER_IDENTIFIERS.items() if kind == "id")
NAME_KEYWORDS = tuple(k for k, kind in HEADER_IDENTIFIERS.items() if kind == "name")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")  # keys (hashed before use)
IDENTIFIER_KEYWORDS = PHI_KEYWORDS + UID_KEYWORDS


def header_identifiers(ds: Dataset) -> dict[str, str]:
    """Raw identifier values of a header, IDENTIFIER_KEYWORDS -> str (for keys and scrubbing; never written out)."""
    return {key: str(ds.get(key, "") or "") for key in IDENTIFIER_KEYWORDS}


def _unreadable(exc: Exception) -> ItemError:
    return ItemError("decode", f"not a readable DICOM file: {type(exc).__name__}: {exc}")


def read_dataset(data: bytes) -> Dataset:
    """A whole instance (pixels included) from DICOM bytes, with or without preamble/meta."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise _unreadable(exc) from None


def read_header(source: BinaryIO | bytes) -> Dataset:
    """The header of an instance (no pixel data is read) from a binary stream or bytes; not sniffed first."""
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(fh, stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise _unreadable(exc) from None


def header_from_json(item: dict[str, Any]) -> Dataset:
    """A header from DICOM JSON (a DICOMweb metadata response item)."""
    try:
        return Dataset.from_json(item)
    except Exception as exc:  # malformed JSON model: pydicom raises many types
        raise ItemError("decode", f"not readable DICOM JSON metadata: {type(exc).__name__}: {exc}") from None


def is_image_header(ds: Dataset) -> bool:
    """True for an image of a series: SeriesInstanceUID and Rows (or per-frame functional groups)."""
    return "SeriesInstanceUID" in ds and ("Rows" in ds or "PerFrameFunctionalGroupsSequence" in ds)


def image_header(source: BinaryIO | bytes, name: str = "") -> Dataset | None:
    """The header of a DICOM image, or None when `source` is not DICOM (by its first bytes and `name`),
    is unreadable, or holds no image (a report, a presentation state): such a file among a series'
    files is skipped."""
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    if detect_format(fh.read(SNIFF_BYTES), name) != "dicom":
        return None
    fh.seek(0)
    try:
        ds = read_header(fh)
    except ItemError:
        return None
    return ds if is_image_header(ds) else None


def no_series(files: int) -> ItemError:
    """The error of an input where no file is a readable DICOM image."""
    return ItemError("read", f"no DICOM image series among {files} file(s)")
