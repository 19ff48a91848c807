"""Shard planning (counts known from the inputs, before any record exists), staged records, streaming
shard writers, sharded error lines and the error counts of summary.json."""

import hashlib
import itertools
import json
import os
import random
import tracemalloc

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from medprep.pipelines.config import Config
from medprep.pipelines.io.sinks import (
    PARTS_FOLDER,
    TARGET_SHARD_BYTES,
    PartReader,
    StagedRecord,
    StageRecords,
    WriteErrors,
    WriteShards,
    _WriteShard,
    error_shard_count,
    image_bytes_estimate,
    plan_shards,
    remove_parts,
    shard_of,
)
from medprep.pipelines.records.identifiers import IDENTIFIER_HIT
from medprep.pipelines.records.split import split_fractions
from medprep.pipelines.records.summary import build_summary, error_counts, sum_counts
from medprep.schemas import read_records
from medprep.schemas.arrow import arrow_schema, to_table
from medprep.schemas.example_codec import decode_example, encode_example


def test_image_bytes_estimate():
    assert image_bytes_estimate(896, "png") == int(896 * 896 * 3 * 0.25) == 602112
    assert image_bytes_estimate(896, "jpeg") == int(896 * 896 * 3 * 0.08)


def test_plan_by_size_from_input_count():
    per = 602112  # one 896² PNG per input
    per_shard = TARGET_SHARD_BYTES // per  # 222 inputs fill 128 MiB
    assert per_shard == 222
    assert plan_shards(222, 0, {"train": 1.0}, per) == {"train": 1}
    assert plan_shards(223, 0, {"train": 1.0}, per) == {"train": 2}
    assert plan_shards(377_000, 0, {"train": 1.0}, per) == {"train": 1692}
    # a volume input carries 85 slices: ~51 MB, so 2.6 inputs per shard
    assert plan_shards(100, 0, {"train": 1.0}, 85 * per) == {"train": 39}


def test_plan_per_split_and_requested():
    fractions = split_fractions(0.1, 0.05)
    assert fractions == {"train": 0.85, "val": 0.1, "test": 0.05}
    assert plan_shards(1000, 8, fractions, 1) == {"train": 8, "val": 8, "test": 8}
    # never more shards than a split's expected inputs: ceil(30 * 0.05) = 2
    assert plan_shards(30, 8, fractions, 1) == {"train": 8, "val": 3, "test": 2}
    assert plan_shards(0, 0, {"train": 1.0}, 1) == {"train": 1}
    assert split_fractions(0.0, 0.0) == {"train": 1.0}


def test_shard_of_uses_the_hex_id():
    assert shard_of("00000000000000ff" + "0" * 16, 7) == 255 % 7
    assert shard_of("ffffffffffffffff" + "0" * 16, 1) == 0


# --- staged records, streaming shards, sharded error lines ----------------------------------------


def _record(i: int, split: str = "train", image_bytes: int = 64) -> dict:
    """A valid record whose example_id is a sha-256 hex (as the pipeline's) and whose image is noise."""
    return {
        "example_id": hashlib.sha256(f"example {i}".encode()).hexdigest(),
        "modality": "CR",
        "task": "image_text",
        "split": split,
        "patient_key": "ab" * 32,
        "study_key": "",
        "images": [random.Random(i).randbytes(image_bytes)],
        "image_info": ['{"source": "x"}'],
        "prompt": "",
        "text": f"report {i}",
        "prompt_ids": [],
        "text_ids": [1, 2, i],
        "input_ids": [],
        "loss_mask": [],
        "messages": "[]",
        "boxes": [],
        "box_labels": [],
        "label": "",
        "source": ["x"],
        "config_hash": "c" * 64,
        "pipeline_version": "0.1.0",
    }


def _whole_list_shards(records: list[dict], plan: dict, out: str) -> None:
    """The shard writer as it was before staging: each shard's serialized records held in one list,
    sorted by example_id, written by ArrayRecordWriter and by ParquetWriter 32 rows at a time."""
    from array_record.python.array_record_module import ArrayRecordWriter

    schema = arrow_schema()
    compression = {name: "zstd" for name in schema.names}
    compression["images"] = "none"
    for split, n in plan.items():
        for index in range(n):
            mine = sorted(
                (r["example_id"], encode_example(r))
                for r in records
                if r["split"] == split and shard_of(r["example_id"], n) == index
            )
            examples = [data for _, data in mine]
            name = f"{split}-{index:05d}-of-{n:05d}"
            os.makedirs(os.path.join(out, "arrayrecord"), exist_ok=True)
            os.makedirs(os.path.join(out, "parquet"), exist_ok=True)
            writer = ArrayRecordWriter(
                os.path.join(out, "arrayrecord", name + ".array_record"), "group_size:1,uncompressed"
            )
            for data in examples:
                writer.write(data)
            writer.close()
            with pq.ParquetWriter(
                os.path.join(out, "parquet", name + ".parquet"), schema, compression=compression
            ) as pw:
                for start in range(0, len(examples), 32):
                    group = [decode_example(d) for d in examples[start : start + 32]]
                    pw.write_table(to_table(group, "png"), row_group_size=32)


def _collected(pcoll, path: str) -> None:
    """Append each element of pcoll to `path` as a JSON line (DoFns run on pickled copies: no shared list)."""
    pcoll | beam.Map(lambda d: open(path, "a").write(json.dumps(d) + "\n"))


def _lines(path: str) -> list[dict]:
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def _run_write_shards(records: list[dict], plan: dict, out: str, part_bytes: int) -> list[dict]:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        staged = (
            p
            | "Records" >> beam.Create(records, reshuffle=False)
            | beam.ParDo(StageRecords(os.path.join(out, PARTS_FOLDER), part_bytes))
        )
        written = (staged, p | "Plan" >> beam.Create([plan])) | WriteShards(out, ("arrayrecord", "parquet"), "png")
        _collected(written, out + ".files.jsonl")
    return _lines(out + ".files.jsonl")


def _tree_bytes(folder: str) -> dict:
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, names in os.walk(folder)
        for f in names
    }


def test_shards_from_staged_parts_equal_the_whole_list_writer(tmp_path):
    # 150 records in 3 train shards (~50 each: more than one 32-row Parquet group), 2 val shards, and a
    # "test" split with no record (its one shard is written empty); parts closed every ~8 records
    records = [_record(i, "val" if i % 5 == 0 else "train", image_bytes=1000) for i in range(150)]
    plan = {"train": 3, "val": 2, "test": 1}
    files = _run_write_shards(records, plan, str(tmp_path / "new"), part_bytes=8000)
    _whole_list_shards(records, plan, str(tmp_path / "old"))
    new = {k: v for k, v in _tree_bytes(str(tmp_path / "new")).items() if not k.startswith(PARTS_FOLDER)}
    assert len(new) == 12 and new == _tree_bytes(str(tmp_path / "old"))
    assert sorted((f["format"], f["split"], f["shard"], f["records"]) for f in files) == sorted(
        (fmt, split, index, sum(r["split"] == split and shard_of(r["example_id"], n) == index for r in records))
        for fmt in ("arrayrecord", "parquet")
        for split, n in plan.items()
        for index in range(n)
    )
    parts = os.listdir(tmp_path / "new" / PARTS_FOLDER)
    assert len(parts) > 2 and all(p.endswith(".records") for p in parts)  # rolled over; no .tmp- file left
    remove_parts(str(tmp_path / "new" / PARTS_FOLDER))
    assert not os.path.exists(tmp_path / "new" / PARTS_FOLDER)


def _stage_bundle(stage: StageRecords, records: list[dict]) -> list[StagedRecord]:
    stage.start_bundle()
    out = [s for r in records for s in stage.process(r)]
    return out + [w.value for w in stage.finish_bundle()]


def test_a_retried_bundle_overwrites_its_own_part(tmp_path):
    parts = str(tmp_path / PARTS_FOLDER)
    records = [_record(i) for i in range(5)]
    stage = StageRecords(parts)
    first = _stage_bundle(stage, records)
    assert [s.example_id for s in first] == [r["example_id"] for r in records]
    assert [s.offset for s in first] == [0] + list(itertools.accumulate(s.size for s in first[:-1]))
    assert os.listdir(parts) == [first[0].part]
    # the bundle fails part-way, then is retried whole: the same part, the same bytes, nothing else
    stage.start_bundle()
    list(stage.process(records[0]))
    stage.start_bundle()  # the runner starts the retry; the broken attempt's file is dropped
    assert _stage_bundle(stage, records) == first
    assert os.listdir(parts) == [first[0].part]
    reader = PartReader(parts)
    assert [reader.read(s) for s in first] == [encode_example(r) for r in records]
    reader.close()
    # other records: another part
    other = _stage_bundle(stage, [_record(9)])
    assert sorted(os.listdir(parts)) == sorted({first[0].part, other[0].part}) and other[0].part != first[0].part


def test_a_shard_is_written_streaming_in_bounded_memory(tmp_path):
    # one shard of 400 records x 256 KiB (100 MiB): written from its parts while Python holds at most
    # one Parquet row group (32 records) and its decoded copy, not the shard
    size, n = 256 << 10, 400
    parts = str(tmp_path / "o" / PARTS_FOLDER)
    stage = StageRecords(parts, part_bytes=16 << 20)
    stage.start_bundle()
    staged = []
    for i in range(n):
        staged += stage.process(_record(i, image_bytes=size))
    staged += [w.value for w in stage.finish_bundle()]
    shard_bytes = sum(s.size for s in staged)
    assert len(staged) == n and shard_bytes > 100 << 20
    writer = _WriteShard(str(tmp_path / "o"), ("arrayrecord", "parquet"), "png")
    tracemalloc.start()
    files = list(writer.process((("train", 0, 1), staged)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [f["records"] for f in files] == [n, n]
    assert peak < 2.5 * 32 * size + (8 << 20), peak  # ~21 MiB allowed; holding the shard takes 100 MiB
    ids = [r["example_id"] for r in read_records(str(tmp_path / "o" / "arrayrecord"))]
    assert ids == sorted(s.example_id for s in staged)


def _run_write_errors(lines: list[dict], out: str, per_shard: int) -> list[dict]:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _collected(p | beam.Create(lines) | WriteErrors(out, per_shard), out + ".files.jsonl")
    return _lines(out + ".files.jsonl")


def _error(i: int, stage: str = "decode") -> dict:
    return {"ref": f"img{i % 4}.dcm", "row": i, "stage": stage, "error": "ItemError", "message": f"bad {i}"}


def test_error_lines_are_sharded_by_count_and_sorted_in_each_shard(tmp_path):
    lines = [_error(i, ("decode", "read")[i % 2]) for i in (7, 3, 1, 6, 2, 5, 4)]
    written = _run_write_errors(lines, str(tmp_path / "o"), per_shard=3)  # 7 lines -> 3 shards
    assert sorted(f["path"] for f in written) == [f"errors/errors-0000{i}-of-00003.jsonl" for i in range(3)]
    back = []
    for f in written:
        shard = [json.loads(x) for x in open(tmp_path / "o" / f["path"])]
        assert len(shard) == f["lines"] and shard == sorted(shard, key=lambda d: d["row"])
        back += shard
    assert sorted(back, key=lambda d: d["row"]) == sorted(lines, key=lambda d: d["row"])
    assert error_shard_count(0) == 1 and error_shard_count(50_000) == 1 and error_shard_count(50_001) == 2


def test_no_error_lines_still_write_the_one_empty_errors_file(tmp_path):
    written = _run_write_errors([], str(tmp_path / "o"), per_shard=3)
    assert written == [{"path": "errors/errors-00000-of-00001.jsonl", "lines": 0}]
    assert (tmp_path / "o" / "errors" / "errors-00000-of-00001.jsonl").read_bytes() == b""


def test_summary_counts_errors_from_combined_counts():
    lines = [_error(1), _error(2), _error(3, "read"), {**_error(4, "privacy"), "message": IDENTIFIER_HIT + ": x"}]
    lines[1]["error"] = "ValueError"
    counts = sum_counts([error_counts(line) for line in lines])
    config = Config()
    s = build_summary("images", config, 10, {"inputs_ok": 6, "examples": 6}, counts, [])
    assert (s["errors"], s["reconciled"], s["identifier_hits"]) == (4, True, 1)
    assert s["errors_by_stage"] == {"decode": 2, "privacy": 1, "read": 1}
    assert s["errors_by_class"] == {"ItemError": 3, "ValueError": 1}
    assert build_summary("images", config, 10, {"inputs_ok": 6}, sum_counts([]), [])["errors"] == 0
