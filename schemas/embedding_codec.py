"""Embedding rows as tf.train.Example bytes (ArrayRecord) and as Arrow tables (Parquet).

The wire format is the one of `schemas.example_codec` (features sorted by name, float lists packed
little-endian float32), written and read here with numpy so that token grids of a million values
move as one buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from medprep.schemas.embedding_fields import EMBEDDING_FIELD_BY_NAME, EMBEDDING_FIELDS, empty_embedding_value
from medprep.schemas.example_codec import (
    bytes_list_feature,
    feature_entries,
    int64_list_feature,
    length_delimited,
    nested_message,
    unpack_varints,
    wire_fields,
)

_ARROW = {
    "str": pa.string(),
    "int": pa.int32(),
    "float": pa.float32(),
    "floats": pa.list_(pa.float32()),
    "int_list": pa.list_(pa.int32()),
}


def _floats(values: Any) -> bytes:
    arr = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    return length_delimited(2, length_delimited(1, arr.tobytes()) if arr.size else b"")


def _feature(kind: str, value: Any) -> bytes:
    if kind == "str":
        return bytes_list_feature([value.encode("utf-8")])
    if kind == "int":
        return int64_list_feature([int(value)])
    if kind == "float":
        return _floats([value])
    if kind == "floats":
        return _floats(value)
    if kind == "int_list":
        return int64_list_feature(value)
    raise ValueError(f"unknown embedding field kind {kind!r}")


def encode_embedding_row(row: dict[str, Any]) -> bytes:
    """Row dict (schemas.embedding_fields) -> serialized tf.train.Example bytes (deterministic)."""
    entries = []
    for f in sorted(EMBEDDING_FIELDS, key=lambda f: f.name):
        entry = length_delimited(1, f.name.encode("utf-8")) + length_delimited(2, _feature(f.kind, row[f.name]))
        entries.append(length_delimited(1, entry))
    return length_delimited(1, b"".join(entries))


def _feature_values(buf: memoryview) -> Any:
    """Feature bytes -> list of bytes | float32 array | list of ints."""
    for number, wire, value in wire_fields(buf):
        if number not in (1, 2, 3):
            continue
        inner = nested_message(wire, value)
        if number == 1:
            return [bytes(nested_message(w, v)) for n, w, v in wire_fields(inner) if n == 1]
        if number == 2:
            parts = [
                np.frombuffer(bytes(nested_message(w, v)), dtype="<f4") for n, w, v in wire_fields(inner) if n == 1
            ]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        ints: list[int] = []
        for n, _, v in wire_fields(inner):
            if n == 1:
                ints.extend(unpack_varints(v) if isinstance(v, memoryview) else [v])
        return ints
    return []


def _finish(raw: dict[str, Any]) -> dict[str, Any]:
    """Decoded feature values -> row with typed values; `embedding` and `tokens` as numpy (None when empty)."""
    row: dict[str, Any] = {}
    for name, f in EMBEDDING_FIELD_BY_NAME.items():
        values = raw.get(name)
        if values is None or (f.kind in ("str", "int", "float") and len(values) == 0):
            row[name] = empty_embedding_value(f.kind)
        elif f.kind == "str":
            row[name] = values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0])
        elif f.kind == "int":
            row[name] = int(values[0])
        elif f.kind == "float":
            row[name] = float(values[0])
        elif f.kind == "floats":
            row[name] = np.asarray(values, dtype=np.float32)
        else:
            row[name] = [int(v) for v in values]
    row["embedding"] = row["embedding"] if len(row["embedding"]) else None
    tokens, shape = row["tokens"], row["token_shape"]
    row["tokens"] = tokens.reshape(shape) if shape and len(tokens) else None
    return row


def decode_embedding_row(data: bytes) -> dict[str, Any]:
    """Serialized tf.train.Example -> row dict: `embedding` float32 (D,), `tokens` float32 token_shape
    (rows, cols, dim), each None when not written; missing fields get empty values."""
    raw = {key: _feature_values(value) for key, value in feature_entries(data)}
    return _finish(raw)


def embedding_arrow_schema() -> pa.Schema:
    """The Parquet schema of embedding rows."""
    return pa.schema([(f.name, _ARROW[f.kind]) for f in EMBEDDING_FIELDS])


def _float_lists(values: list[Any]) -> pa.Array:
    arrays = [np.ascontiguousarray(v, dtype=np.float32).reshape(-1) for v in values]
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))


def embedding_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (as encode_embedding_row takes them) -> Arrow table in embedding_arrow_schema()."""
    columns = {}
    for f in EMBEDDING_FIELDS:
        values = [r[f.name] for r in rows]
        columns[f.name] = _float_lists(values) if f.kind == "floats" else pa.array(values, type=_ARROW[f.kind])
    return pa.Table.from_pydict(columns, schema=embedding_arrow_schema())


def rows_from_batch(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """An Arrow record batch of embedding rows -> row dicts as decode_embedding_row gives them."""
    names = set(batch.schema.names)
    columns: dict[str, Any] = {}
    for f in EMBEDDING_FIELDS:
        if f.name not in names:
            continue
        column = batch.column(f.name)
        if f.kind == "floats":
            offsets = column.offsets.to_numpy()
            flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            columns[f.name] = [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]
        else:
            columns[f.name] = column.to_pylist()
    rows = []
    for i in range(batch.num_rows):
        raw: dict[str, Any] = {}
        for name, values in columns.items():
            value = values[i]
            kind = EMBEDDING_FIELD_BY_NAME[name].kind
            raw[name] = value if kind in ("floats", "int_list") else ([] if value is None else [value])
        rows.append(_finish(raw))
    return rows
