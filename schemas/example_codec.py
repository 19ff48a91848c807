"""tf.train.Example wire encoding of a record, written without TensorFlow.

Example{features: Features{feature: map<string, Feature>}}; Feature is one of
bytes_list (1), float_list (2, packed float32), int64_list (3, packed varint).
Keys are written sorted so the bytes are deterministic.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, cast

import numpy as np

from medprep.schemas.fields import FIELD_BY_NAME, FIELDS, empty_value

_LEN = 2


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A protobuf length-delimited field (wire type 2): key, length, payload."""
    return _varint((number << 3) | _LEN) + _varint(len(payload)) + payload


def bytes_list_feature(values: Iterable[bytes]) -> bytes:
    """The payload of a tf.train.Feature holding a BytesList."""
    return length_delimited(1, b"".join(length_delimited(1, v) for v in values))


def packed_varints(values: Iterable[int]) -> bytes:
    """int64 values -> concatenated protobuf varints (negatives as 10-byte two's complement), vectorized."""
    u = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64).astype(np.uint64)
    if u.size == 0 or (u < 128).all():
        return u.astype(np.uint8).tobytes()
    sizes = np.ones(u.size, np.int64)
    rest = u >> np.uint64(7)
    while rest.any():
        sizes += rest > 0
        rest >>= np.uint64(7)
    out = np.empty(int(sizes.sum()), np.uint8)
    at = np.cumsum(sizes) - sizes
    for k in range(int(sizes.max())):
        more = sizes > k
        byte = ((u[more] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= (sizes[more] > k + 1).astype(np.uint8) << 7
        out[at[more] + k] = byte
    return out.tobytes()


def unpack_varints(payload: memoryview) -> list[int]:
    """Concatenated protobuf varints -> signed int64 values; ValueError if the last one is cut off."""
    a = np.frombuffer(payload, np.uint8)
    if a.size == 0:
        return []
    if a[-1] & 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(a < 128)
    starts = np.concatenate(([0], ends[:-1] + 1))
    sizes = ends - starts + 1
    if sizes.max() > 10:
        raise ValueError("varint too long")
    values = np.zeros(ends.size, np.uint64)
    for k in range(int(sizes.max())):
        more = sizes > k
        values[more] |= (a[starts[more] + k].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * k)
    signed: list[int] = values.view(np.int64).tolist()
    return signed


def int64_list_feature(values: Iterable[int]) -> bytes:
    """The payload of a tf.train.Feature holding an Int64List (packed varints)."""
    packed = packed_varints(values)
    return length_delimited(3, length_delimited(1, packed) if packed else b"")


def _float_list(values: Iterable[float]) -> bytes:
    arr = np.asarray(list(values), dtype="<f4")
    return length_delimited(2, length_delimited(1, arr.tobytes()) if arr.size else b"")


def _feature(kind: str, value: Any) -> bytes:
    if kind == "str":
        return bytes_list_feature([value.encode("utf-8")])
    if kind == "str_list":
        return bytes_list_feature(v.encode("utf-8") for v in value)
    if kind == "images":
        return bytes_list_feature(bytes(v) for v in value)
    if kind in ("int_list", "mask"):
        return int64_list_feature(value)
    if kind == "boxes":
        return _float_list(c for box in value for c in box)
    raise ValueError(f"unknown field kind {kind!r}")


def encode_example(record: dict[str, Any]) -> bytes:
    """Record dict (medprep.schemas.fields) -> serialized tf.train.Example bytes (deterministic)."""
    entries = []
    for f in sorted(FIELDS, key=lambda f: f.name):
        entry = length_delimited(1, f.name.encode("utf-8")) + length_delimited(2, _feature(f.kind, record[f.name]))
        entries.append(length_delimited(1, entry))
    return length_delimited(1, b"".join(entries))


# ---- decoding -------------------------------------------------------------------------


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def wire_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) over a message; value is int or memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def nested_message(wire: int, value: int | memoryview) -> memoryview:
    """A nested message's bytes; ValueError if the field is not length-delimited."""
    if wire != 2:
        raise ValueError(f"expected a length-delimited field, got wire type {wire}")
    return cast(memoryview, value)  # wire type 2 is the one wire_fields yields as a memoryview


def _decode_feature(buf: memoryview) -> tuple[str, list[Any]]:
    """Feature bytes -> ('bytes'|'float'|'int64', list of values)."""
    for number, wire, value in wire_fields(buf):
        if number not in (1, 2, 3):
            continue
        message = nested_message(wire, value)
        if number == 1:
            return "bytes", [bytes(nested_message(w, v)) for n, w, v in wire_fields(message) if n == 1]
        if number == 2:
            floats: list[float] = []
            for n, wire, v in wire_fields(message):
                if n == 1 and wire == 2:
                    floats.extend(np.frombuffer(bytes(v), dtype="<f4").tolist())
                elif n == 1 and wire == 5:
                    floats.append(struct.unpack("<f", bytes(v))[0])
            return "float", floats
        if number == 3:
            ints: list[int] = []
            for n, wire, v in wire_fields(message):
                if n == 1 and wire == 2:
                    ints.extend(unpack_varints(cast(memoryview, v)))
                elif n == 1 and wire == 0:
                    ints.append(_signed64(cast(int, v)))
            return "int64", ints
    return "bytes", []


def feature_entries(data: bytes) -> Iterator[tuple[str, memoryview]]:
    """Serialized tf.train.Example -> (feature key, serialized tf.train.Feature) in wire order."""
    for n, wire, features in wire_fields(memoryview(data)):
        if n != 1:
            continue
        for m, w, entry in wire_fields(nested_message(wire, features)):
            if m != 1:
                continue
            key, value = "", memoryview(b"")
            for k, kw, v in wire_fields(nested_message(w, entry)):
                if k == 1:
                    key = bytes(nested_message(kw, v)).decode("utf-8")
                elif k == 2:
                    value = nested_message(kw, v)
            yield key, value


def decode_example(data: bytes) -> dict[str, Any]:
    """Serialized tf.train.Example -> record dict (missing fields get empty values)."""
    raw: dict[str, list[Any]] = {}
    for key, value in feature_entries(data):
        raw[key] = _decode_feature(value)[1]
    record: dict[str, Any] = {}
    for name, f in FIELD_BY_NAME.items():
        values = raw.pop(name, None)
        if values is None:
            record[name] = empty_value(f.kind)
        elif f.kind == "str":
            record[name] = values[0].decode("utf-8") if values else ""
        elif f.kind == "str_list":
            record[name] = [v.decode("utf-8") for v in values]
        elif f.kind == "boxes":
            record[name] = [values[i : i + 4] for i in range(0, len(values), 4)]
        else:
            record[name] = list(values)
    record.update(raw)  # unknown features kept as raw lists
    return record
