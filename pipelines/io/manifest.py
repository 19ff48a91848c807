"""Manifest rows (JSONL, CSV or Parquet; local or gs://) -> validated, normalized dicts.

Columns: image (a reference or a list), text, prompt, prior, boxes, box_labels, label,
patient_id, id, modality, mpp. List-valued columns may be JSON strings in CSV.
An unknown column is refused at start-up (check_manifest), naming it and the closest known
one, unless extra columns are allowed; a normalized row keeps them as text in `extra`.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import posixpath
from collections.abc import Iterator
from typing import Any

from medprep.transforms.errors import ItemError

KNOWN_COLUMNS = frozenset(
    {"image", "text", "prompt", "prior", "boxes", "box_labels", "label", "patient_id", "id", "modality", "mpp"}
)


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and row."""


def closest_column(name: str) -> str:
    """The known column `name` is most likely a misspelling of ('' when none is close)."""
    match = difflib.get_close_matches(name.strip().lower(), sorted(KNOWN_COLUMNS), n=1, cutoff=0.6)
    return match[0] if match else ""


def unknown_columns_message(columns) -> str:
    """'unknown column 'promt' (did you mean 'prompt'?)', one clause per column, then the known ones."""
    parts = []
    for name in columns:
        near = closest_column(name)
        label = f"column {name!r}" if name else "a column with no name"
        parts.append(f"unknown {label}" + (f" (did you mean {near!r}?)" if near else ""))
    return (
        f"{'; '.join(parts)}. Known columns: {', '.join(sorted(KNOWN_COLUMNS))}; "
        "pass --allow_extra_columns to keep other columns (listed in summary.json)"
    )


def extra_columns(raw: dict) -> list[str]:
    """The columns of one raw row that medprep does not know, in the row's order.

    An unnamed column (a CSV header ending in a comma) counts only where it holds a value.
    """
    return [k for k, v in raw.items() if k not in KNOWN_COLUMNS and (k != "" or not _is_missing(v))]


def _extra_text(value: Any) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if _is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _as_str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_str(value: Any, where: str = "", column: str = "") -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestError(f"{where}: column '{column}' must be text, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalize_row(raw: dict, row: int) -> dict:
    """One raw row (numbered from 1) -> normalized dict, or ManifestError naming the row and column."""
    where = f"row {row}"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a row must be an object/mapping")
    if None in raw:  # csv.DictReader puts values beyond the header under the key None
        raise ManifestError(f"{where}: more values than the header has columns")
    image = _maybe_json(raw.get("image"))
    if hasattr(image, "tolist"):
        image = image.tolist()
    if _is_missing(image) or image == []:
        raise ManifestError(f"{where}: column 'image' is empty")
    images = image if isinstance(image, list) else [image]
    if not all(isinstance(i, str) and i for i in images):
        raise ManifestError(f"{where}: column 'image' must hold a reference or a list of references")
    boxes = _maybe_json(raw.get("boxes"))
    if hasattr(boxes, "tolist"):
        boxes = boxes.tolist()
    boxes = [] if _is_missing(boxes) else boxes
    bad_boxes = ManifestError(f"{where}: column 'boxes' must be a list of [x0, y0, x1, y1]")
    if not isinstance(boxes, list) or not all(
        isinstance(b, list) and len(b) == 4 and not any(isinstance(c, bool) for c in b) for b in boxes
    ):
        raise bad_boxes
    try:
        boxes = [[float(c) for c in box] for box in boxes]
    except (TypeError, ValueError):
        raise bad_boxes from None
    labels = _maybe_json(raw.get("box_labels"))
    if hasattr(labels, "tolist"):
        labels = labels.tolist()
    labels = [] if _is_missing(labels) else labels
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list):
        raise ManifestError(f"{where}: column 'box_labels' must be a list of labels")
    labels = [_as_str(label, where, "box_labels") for label in labels]
    if boxes and len(labels) != len(boxes):
        raise ManifestError(f"{where}: {len(boxes)} boxes but {len(labels)} box_labels")
    prior = _as_str(raw.get("prior"), where, "prior")
    if prior and len(images) != 1:
        raise ManifestError(f"{where}: a 'prior' needs exactly one current 'image'")
    text = {c: _as_str(raw.get(c), where, c) for c in ("id", "text", "prompt", "label", "patient_id", "modality")}
    mpp: Any = raw.get("mpp")
    if _is_missing(mpp):
        mpp = None
    else:
        bad_mpp = ManifestError(f"{where}: column 'mpp' must be a resolution in µm/px > 0")
        if isinstance(mpp, bool):
            raise bad_mpp
        try:
            mpp = float(mpp)
        except (TypeError, ValueError):
            raise bad_mpp from None
        if not mpp > 0:
            raise bad_mpp
    extra = {str(k): _extra_text(raw[k]) for k in extra_columns(raw)}
    return {
        "row": row,
        "images": images,
        "prior": prior,
        "boxes": boxes,
        "box_labels": labels,
        "mpp": mpp,
        **text,
        "extra": extra,
    }


def resolve_ref(ref: str, manifest: str) -> str:
    """A reference as read: absolute paths and URIs as they are, relative ones against the manifest's folder.

    Records keep the reference as written, so a manifest with relative references gives the
    same records wherever it and its images live (local disk, gs://).
    """
    if "://" in ref or os.path.isabs(ref):
        return ref
    if "://" in manifest:
        return posixpath.join(posixpath.dirname(manifest), ref)
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), ref)


def raw_rows(path: str) -> Iterator[dict]:
    """The rows of a JSONL, CSV or Parquet table as written (dicts, unchecked); the manifest and reports files.

    Streamed: rows are parsed as the file is read (Parquet by batches of 1,024 rows), so reading a
    manifest holds a few rows, not the file, whatever its length (it is read by one worker: one step)."""
    from medprep.pipelines.io.sources.files import open_input

    lower = path.lower()
    if not lower.endswith((".parquet", ".csv", ".jsonl", ".json", ".ndjson")):
        raise ManifestError(f"{path}: unsupported manifest format (use .jsonl, .csv or .parquet)")
    try:
        fh = open_input(path)  # a regular file only (a FIFO would block), at most --max_input_bytes' default
    except ItemError as exc:
        raise ManifestError(exc.message) from None
    with fh:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        elif lower.endswith(".csv"):
            yield from csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8-sig", newline=""))
        else:
            for n, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8")):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(f"{path}: line {n + 1} is not valid JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise ManifestError(f"{path}: line {n + 1} is not a JSON object")
                yield row


def _read_raw(path: str) -> Iterator[tuple[int, dict]]:
    """(row number from 1, raw row); read failures become ManifestError naming the path."""
    try:
        yield from enumerate(raw_rows(path), start=1)
    except ManifestError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from None
    except Exception as exc:  # pyarrow / Beam errors on unreadable files
        if "No such file" in str(exc) or "not found" in str(exc).lower():
            raise ManifestError(f"{path}: manifest not found") from None
        raise ManifestError(f"{path}: cannot read manifest: {type(exc).__name__}: {exc}") from None


def read_manifest(path: str) -> Iterator[dict]:
    """Normalized rows of a manifest, numbered from 1 (the data row); ManifestError names path and row.

    Unknown columns are not refused here (workers run this; check_manifest refused them at
    start-up unless allowed): they are kept in each row's `extra`.
    """
    for row, raw in _read_raw(path):
        try:
            yield normalize_row(raw, row)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None


def check_manifest(path: str, allow_extra_columns: bool = False) -> int:
    """Validate every row at start-up; duplicate ids and unknown columns are errors. Returns the row count."""
    return inspect_manifest(path, allow_extra_columns)[0]


def inspect_manifest(
    path: str, allow_extra_columns: bool = False, servers: set[str] | None = None
) -> tuple[int, tuple[str, ...]]:
    """check_manifest, also returning the extra columns (sorted) that `allow_extra_columns` let through.

    Without `allow_extra_columns`, the first row holding an unknown column is a ManifestError
    naming the column and the closest known one. `servers`, when given, receives the DICOMweb
    service roots the rows reference (checked for reachability at start-up).
    """
    from medprep.transforms.dicomweb_ref import parse_ref

    seen: dict[str, int] = {}
    extras: set[str] = set()
    count = 0
    for n, raw in _read_raw(path):
        unknown = extra_columns(raw) if isinstance(raw, dict) and None not in raw else []
        if unknown and not allow_extra_columns:  # first: a misspelt 'image' is named as such
            raise ManifestError(f"{path}: row {n}: {unknown_columns_message(unknown)}")
        extras.update(unknown)
        try:
            row = normalize_row(raw, n)
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None
        count += 1
        if servers is not None:
            for ref in [row["prior"], *row["images"]]:
                web = parse_ref(ref) if ref else None
                if web is not None:
                    servers.add(web.base)
        if row["id"]:
            if row["id"] in seen:
                raise ManifestError(f"{path}: row {row['row']}: id {row['id']!r} repeats row {seen[row['id']]}")
            seen[row["id"]] = row["row"]
    if count == 0:
        raise ManifestError(f"{path}: manifest has no rows")
    return count, tuple(sorted(extras))


TEXT_FIELDS = ("text", "prompt", "label")


def check_text_sizes(row: dict, limit: int) -> None:
    """Refuse a row whose text, prompt, label or any box label is longer than `limit` UTF-8 bytes
    (ItemError at stage 'text'): a report is kilobytes; megabytes are a wrong column or a wrong file."""
    fields = [(name, row.get(name) or "") for name in TEXT_FIELDS]
    fields += [(f"box_labels[{i}]", label) for i, label in enumerate(row.get("box_labels") or [])]
    for name, value in fields:
        if len(value) > limit // 4 and len(value.encode("utf-8")) > limit:  # 4 bytes per character at most
            size = len(value.encode("utf-8"))
            raise ItemError("text", f"{name} is {size:,} bytes (UTF-8), above --max_text_bytes ({limit:,})")
