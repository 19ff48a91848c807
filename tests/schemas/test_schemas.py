import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medprep.schemas import (
    FIELD_NAMES,
    arrow_schema,
    decode_example,
    encode_example,
    read_records,
    to_model_input,
    to_table,
    validate_record,
)
from medprep.schemas.readers import ArrayRecordSource


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def make_record(i: int = 0) -> dict:
    return {
        "example_id": f"{i:032x}",
        "modality": "CR",
        "task": "localization",
        "split": "train",
        "patient_key": "ab" * 32,
        "study_key": "",
        "images": [_png((i, 2, 3)), _png((4, 5, 6))],
        "image_info": ['{"source":"a.dcm"}', '{"source":"b.dcm"}'],
        "prompt": "Locate — ünïcode ✓",
        "text": '[{"box_2d": [1, 2, 3, 4], "label": "x"}]',
        "prompt_ids": [1, 2, 300000],
        "text_ids": [],
        "input_ids": [2, 262144, 255999],
        "loss_mask": [0, 0, 1],
        "messages": '[{"role":"user","content":[{"type":"image"},{"type":"image"},{"type":"text","text":"Locate"}]}]',
        "boxes": [[0.25, 0.5, 0.75, float(np.float32(0.1))]],
        "box_labels": ["x"],
        "label": "",
        "source": ["a.dcm", "b.dcm"],
        "config_hash": "c" * 64,
        "pipeline_version": "0.1.0",
    }


def _tf_example_classes():
    """tf.train.Example message classes built from its .proto definition with the protobuf runtime."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="tensorflow", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields, nested=()):
        m = fdp.message_type.add(name=name)
        for fname, num, ftype, label, tname, packed in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname
            if packed:
                f.options.packed = True
        return m

    R, OPT = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", [("value", 1, F.TYPE_BYTES, R, None, False)])
    msg("FloatList", [("value", 1, F.TYPE_FLOAT, R, None, True)])
    msg("Int64List", [("value", 1, F.TYPE_INT64, R, None, True)])
    feat = msg(
        "Feature",
        [
            ("bytes_list", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.BytesList", False),
            ("float_list", 2, F.TYPE_MESSAGE, OPT, ".tensorflow.FloatList", False),
            ("int64_list", 3, F.TYPE_MESSAGE, OPT, ".tensorflow.Int64List", False),
        ],
    )
    feat.oneof_decl.add(name="kind")
    for f in feat.field:
        f.oneof_index = 0
    features = msg("Features", [("feature", 1, F.TYPE_MESSAGE, R, ".tensorflow.Features.FeatureEntry", False)])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=OPT)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=OPT, type_name=".tensorflow.Feature")
    msg("Example", [("features", 1, F.TYPE_MESSAGE, OPT, ".tensorflow.Features", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def _key_order(data: bytes) -> list:
    from medprep.schemas.example_codec import wire_fields

    keys = []
    for _, _, features in wire_fields(memoryview(data)):
        for _, _, entry in wire_fields(features):
            keys += [bytes(v).decode() for k, _, v in wire_fields(entry) if k == 1]
    return keys


def test_example_round_trip_and_determinism():
    rec = make_record(3)
    validate_record(rec)
    data = encode_example(rec)
    assert encode_example(rec) == data
    assert decode_example(data) == rec


def test_example_is_wire_compatible_with_protobuf_runtime():
    Example = _tf_example_classes()
    rec = make_record(1)
    ex = Example()
    ex.ParseFromString(encode_example(rec))
    feat = ex.features.feature
    assert set(feat.keys()) == set(FIELD_NAMES)
    assert list(feat["images"].bytes_list.value) == rec["images"]
    assert list(feat["prompt_ids"].int64_list.value) == [1, 2, 300000]
    assert feat["prompt"].bytes_list.value[0].decode() == rec["prompt"]
    assert list(feat["boxes"].float_list.value) == [c for b in rec["boxes"] for c in b]
    assert feat["text_ids"].WhichOneof("kind") == "int64_list" and not feat["text_ids"].int64_list.value
    # the same message as protobuf's own serialization (upb orders map keys differently:
    # 'prompt_ids' before 'prompt'); ours is plain lexicographic, like TensorFlow's C++ std::map
    assert Example.FromString(ex.SerializeToString(deterministic=True)) == Example.FromString(encode_example(rec))
    assert list(feat.keys()) is not None and _key_order(encode_example(rec)) == sorted(FIELD_NAMES)
    # and we decode what protobuf writes, including negative int64 and unpacked forms
    ex.features.feature["prompt_ids"].int64_list.value[:] = [-5, 2**40]
    assert decode_example(ex.SerializeToString())["prompt_ids"] == [-5, 2**40]


def test_decode_rejects_truncated_bytes():
    data = encode_example(make_record())
    with pytest.raises(ValueError):
        decode_example(data[:-7])


def test_parquet_round_trip_and_hf_metadata(tmp_path):
    recs = [make_record(i) for i in range(3)]
    table = to_table(recs)
    assert table.schema.equals(arrow_schema(), check_metadata=True)
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    assert list(read_records(str(path))) == recs


def test_hf_datasets_decodes_parquet_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = [make_record(i) for i in range(2)]
    pq.write_table(to_table(recs), tmp_path / "train-00000-of-00001.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "*.parquet"), split="train")
    row = ds[1]
    assert isinstance(row["images"][0], Image.Image)
    assert row["images"][0].getpixel((0, 0)) == (1, 2, 3)
    assert row["prompt"] == recs[1]["prompt"] and row["prompt_ids"] == [1, 2, 300000]
    assert row["boxes"] == recs[1]["boxes"]


def test_arrayrecord_random_access_source(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    recs = [make_record(i) for i in range(5)]
    for shard, chunk in enumerate((recs[:2], recs[2:])):
        w = ArrayRecordWriter(str(tmp_path / f"train-{shard:05d}-of-00002.array_record"), "group_size:1")
        for r in chunk:
            w.write(encode_example(r))
        w.close()
    src = ArrayRecordSource(str(tmp_path))
    assert len(src) == 5 and src[3] == recs[3] and src[-1] == recs[4]
    import pickle

    assert pickle.loads(pickle.dumps(src))[0] == recs[0]
    assert list(read_records(str(tmp_path))) == recs
    with pytest.raises(IndexError):
        src[5]


def test_to_model_input_matches_numpy_reference():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (896, 896, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    x = to_model_input(buf.getvalue())
    assert x.dtype == np.float32 and x.shape == (896, 896, 3)
    assert np.allclose(x, arr.astype(np.float64) / 127.5 - 1.0, atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1
    assert to_model_input(buf.getvalue(), channels_first=True).shape == (3, 896, 896)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50))
def test_vectorized_varints_equal_the_one_at_a_time_wire_format(values):
    from medprep.schemas.example_codec import _read_varint, _signed64, _varint, packed_varints, unpack_varints

    reference = b"".join(_varint(v) for v in values)
    assert packed_varints(values) == reference
    decoded, pos, view = [], 0, memoryview(reference)
    while pos < len(view):
        x, pos = _read_varint(view, pos)
        decoded.append(_signed64(x))
    assert unpack_varints(view) == decoded == values


def test_unpack_varints_rejects_cut_off_and_overlong_input():
    from medprep.schemas.example_codec import unpack_varints

    for bad, why in ((b"\x80", "truncated"), (b"\x01\xff", "truncated"), (b"\xff" * 11 + b"\x01", "too long")):
        with pytest.raises(ValueError, match=why):
            unpack_varints(memoryview(bad))
