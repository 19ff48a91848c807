"""Arrow/Parquet form of a record, with Hugging Face `datasets` feature metadata.

Images are list<struct<bytes: binary, path: string>>, which `datasets` decodes as a list
of PIL images; boxes are list<list<float32>>.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from medprep.schemas.fields import FIELDS

_IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_ARROW = {
    "str": pa.string(),
    "str_list": pa.list_(pa.string()),
    "int_list": pa.list_(pa.int32()),
    "mask": pa.list_(pa.int8()),
    "images": pa.list_(_IMAGE_STRUCT),
    "boxes": pa.list_(pa.list_(pa.float32())),
}
_HF = {
    "str": {"dtype": "string", "_type": "Value"},
    "str_list": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
    "int_list": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "mask": {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "List"},
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "boxes": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"}, "_type": "List"},
}


def hf_features() -> dict[str, Any]:
    """The `datasets` Features dict (JSON form) for a record."""
    return {f.name: _HF[f.kind] for f in FIELDS}


def arrow_schema() -> pa.Schema:
    """The Parquet schema, carrying Hugging Face feature metadata under b'huggingface'."""
    meta = {b"huggingface": json.dumps({"info": {"features": hf_features()}}).encode("utf-8")}
    return pa.schema([(f.name, _ARROW[f.kind]) for f in FIELDS], metadata=meta)


def image_path(example_id: str, index: int, extension: str) -> str:
    """The `path` stored beside each image's bytes: '{example_id}_{index}{extension}'."""
    return f"{example_id}_{index}{extension}"


def to_table(records: list[dict[str, Any]], extension: str = ".png") -> pa.Table:
    """Records -> Arrow table in the Parquet schema."""
    columns = {}
    for f in FIELDS:
        if f.kind == "images":
            columns[f.name] = [
                [{"bytes": b, "path": image_path(r["example_id"], i, extension)} for i, b in enumerate(r[f.name])]
                for r in records
            ]
        else:
            columns[f.name] = [r[f.name] for r in records]
    return pa.Table.from_pydict(columns, schema=arrow_schema())


def row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row (as from Table.to_pylist) -> record dict with images as bytes."""
    record: dict[str, Any] = {}
    for f in FIELDS:
        value = row.get(f.name)
        if f.kind == "images":
            record[f.name] = [item["bytes"] for item in (value or [])]
        elif value is None:
            record[f.name] = "" if f.kind == "str" else []
        else:
            record[f.name] = value
    return record
