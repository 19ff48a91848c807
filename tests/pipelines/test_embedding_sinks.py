"""Embedding shards on the records' staged, streaming path (pipelines/io/sinks.py): the same bytes as the
whole-shard writer they replace, one shard of many rows in bounded memory, and embed's summary.json counts
from combined error counts."""

import hashlib
import json
import os
import tracemalloc
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from medprep.pipelines.io.embedding_sinks import (
    EMBEDDING_FORMATS,
    ROW_GROUP_BYTES,
    WriteEmbeddingShards,
    embedding_entry,
    row_key,
    rows_per_group,
)
from medprep.pipelines.io.sinks import PARTS_FOLDER, StageRecords, _WriteShard, shard_of
from medprep.pipelines.records.summary import error_counts, sum_counts
from medprep.schemas.embedding_codec import (
    decode_embedding_row,
    embedding_arrow_schema,
    embedding_table,
    encode_embedding_row,
)
from medprep.schemas.embedding_fields import EMBEDDING_FIELDS, empty_embedding_value
from medprep.schemas.embedding_readers import read_embeddings


def _row(i: int, image_index: int = 0, split: str = "train", dim: int = 16, grid: tuple = (2, 2, 8)) -> dict:
    """A row as ToRows makes it: a sha-256 example_id, random float32 vectors (tokens optional)."""
    rng = np.random.default_rng(i * 1000 + image_index)
    row = {f.name: empty_embedding_value(f.kind) for f in EMBEDDING_FIELDS}
    row.update(
        example_id=hashlib.sha256(f"example {i}".encode()).hexdigest(),
        image_index=image_index,
        split=split,
        task="image_text",
        image_info=json.dumps({"source": f"s{i}"}),
        embedding=rng.standard_normal(dim).astype(np.float32),
        model="tiny",
        model_hash="m" * 64,
        image_size=[224, 224],
    )
    if grid:
        row.update(tokens=rng.standard_normal(grid).astype(np.float32), token_shape=list(grid))
    return row


def _whole_shard_writer(rows: list[dict], plan: dict, out: str) -> None:
    """The embedding shard writer as it was before staging (the oracle): each shard's serialized rows held
    in one list sorted by row key, ArrayRecord written record by record, Parquet in row groups of
    ROW_GROUP_BYTES // the largest row (at most 4096)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    schema = embedding_arrow_schema()
    compression = {name: "zstd" for name in schema.names}
    compression["embedding"] = compression["tokens"] = "none"
    entries = [embedding_entry(r) for r in rows]
    for split, n in plan.items():
        for index in range(n):
            mine = [d for _, d in sorted((k, d) for s, k, d in entries if s == split and shard_of(k, n) == index)]
            name = f"{split}-{index:05d}-of-{n:05d}"
            os.makedirs(os.path.join(out, "arrayrecord"), exist_ok=True)
            os.makedirs(os.path.join(out, "parquet"), exist_ok=True)
            writer = ArrayRecordWriter(
                os.path.join(out, "arrayrecord", name + ".array_record"), "group_size:1,uncompressed"
            )
            for data in mine:
                writer.write(data)
            writer.close()
            per_group = max(1, min(4096, ROW_GROUP_BYTES // max(1, max((len(d) for d in mine), default=1))))
            with pq.ParquetWriter(
                os.path.join(out, "parquet", name + ".parquet"), schema, compression=compression
            ) as w:
                for start in range(0, len(mine), per_group):
                    group = [decode_embedding_row(d) for d in mine[start : start + per_group]]
                    for r in group:
                        r["embedding"] = [] if r["embedding"] is None else r["embedding"]
                        r["tokens"] = [] if r["tokens"] is None else r["tokens"].reshape(-1)
                    w.write_table(embedding_table(group), row_group_size=per_group)


def _tree_bytes(folder: str) -> dict:
    return {
        os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
        for d, _, names in os.walk(folder)
        for f in names
        if PARTS_FOLDER not in d
    }


def _run(rows: list[dict], plan: dict, out: str) -> list[dict]:
    files = out + ".files.jsonl"
    with beam.Pipeline(runner=FnApiRunner()) as p:
        written = (p | "Rows" >> beam.Create(rows, reshuffle=False), p | "Plan" >> beam.Create([plan])) | (
            WriteEmbeddingShards(out, ("arrayrecord", "parquet"))
        )
        written | beam.Map(lambda d: open(files, "a").write(json.dumps(d) + "\n"))
    return [json.loads(x) for x in open(files)]


def test_staged_shards_are_byte_identical_to_the_whole_shard_writer(tmp_path):
    # 3 images per example over 60 examples in 2 splits, rows arriving in no particular order; a split
    # whose shards get no row ("test") is written empty; several images of an example stay in one shard
    rows = [_row(i, k, "val" if i % 4 == 0 else "train") for i in range(60) for k in (2, 0, 1)]
    rows.reverse()
    plan = {"train": 3, "val": 2, "test": 1}
    files = _run(rows, plan, str(tmp_path / "new"))
    _whole_shard_writer(rows, plan, str(tmp_path / "old"))
    new = _tree_bytes(str(tmp_path / "new"))
    assert len(new) == 12 and new == _tree_bytes(str(tmp_path / "old"))
    assert sum(f["records"] for f in files if f["format"] == "parquet") == 180
    back = [(r["example_id"], r["image_index"]) for r in read_embeddings(str(tmp_path / "new" / "parquet"), "train")]
    assert len(back) == 135 and len(set(back)) == 135
    a = next(r for r in read_embeddings(str(tmp_path / "new" / "arrayrecord")) if r["image_index"] == 1)
    original = next(r for r in rows if (r["example_id"], r["image_index"]) == (a["example_id"], 1))
    assert np.array_equal(a["tokens"], original["tokens"]) and np.array_equal(a["embedding"], original["embedding"])


def _stage(rows: Iterable[dict], out: str) -> list:
    """The rows staged to parts under out/PARTS_FOLDER as one bundle (16 MiB parts): their locations."""
    stage = StageRecords(os.path.join(out, PARTS_FOLDER), part_bytes=16 << 20, entry=embedding_entry)
    stage.start_bundle()
    staged = [s for row in rows for s in stage.process(row)]
    return staged + [w.value for w in stage.finish_bundle()]


def test_pooled_rows_fill_large_row_groups_as_before(tmp_path):
    # pooled-only rows are small: 4096 rows a group (the cap), so 5000 rows make 2 groups, byte for byte as before
    rows = [_row(i, 0, grid=()) for i in range(5000)]
    staged = _stage(rows, str(tmp_path / "new"))
    list(
        _WriteShard(str(tmp_path / "new"), ("arrayrecord", "parquet"), "", EMBEDDING_FORMATS).process(
            (("train", 0, 1), staged)
        )
    )
    _whole_shard_writer(rows, {"train": 1}, str(tmp_path / "old"))
    assert _tree_bytes(str(tmp_path / "new")) == _tree_bytes(str(tmp_path / "old"))
    meta = pq.ParquetFile(tmp_path / "new" / "parquet" / "train-00000-of-00001.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4096, 904]
    assert rows_per_group(len(encode_embedding_row(rows[0]))) == 4096 and rows_per_group(ROW_GROUP_BYTES) == 1


def test_one_shard_of_many_token_rows_is_written_in_bounded_memory(tmp_path):
    # --num_shards 1 over 1,200 rows of 32,768 token values (128 KiB each, a 150 MiB shard): written from its
    # parts while Python holds at most a row group (16 MiB of rows) and its decoded copies, not the shard
    staged = _stage((_row(i, 0, grid=(16, 16, 128)) for i in range(1200)), str(tmp_path / "o"))
    assert len(staged) == 1200 and sum(s.size for s in staged) > 150 << 20
    writer = _WriteShard(str(tmp_path / "o"), ("arrayrecord", "parquet"), "", EMBEDDING_FORMATS)
    tracemalloc.start()
    files = list(writer.process((("train", 0, 1), staged)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [f["records"] for f in files] == [1200, 1200]
    print(f"peak {peak / 2**20:.1f} MiB")
    assert peak < 4 * ROW_GROUP_BYTES, peak  # 64 MiB allowed; holding the shard takes 150 MiB
    keys = [row_key(r["example_id"], r["image_index"]) for r in read_embeddings(str(tmp_path / "o" / "parquet"))]
    assert keys == sorted(s.example_id for s in staged)


def test_embed_summary_counts_errors_from_combined_counts():
    from medprep.pipelines.graphs.embed import EmbedConfig, build_summary

    lines = [
        {"ref": f"{'ab' * 16}/{i}", "row": -1, "stage": stage, "error": error, "message": "m"}
        for i, (stage, error) in enumerate([("decode", "ValueError")] * 3 + [("read", "RecordSchemaError")])
    ]
    config = EmbedConfig(
        input="in", model="m", output_dir="o", model_name="m", model_hash="h", encoder_info="{}", input_format="parquet"
    )
    stats = {"inputs": 10, "embeddings": 6, "by_split/train": 6}
    s = build_summary(config, stats, sum_counts(error_counts(line) for line in lines), [])
    assert (s["inputs"], s["embeddings"], s["errors"], s["reconciled"]) == (10, 6, 4, True)
    assert s["errors_by_stage"] == {"decode": 3, "read": 1}
    assert s["errors_by_class"] == {"RecordSchemaError": 1, "ValueError": 3}
    assert s["by_split"] == {"train": 6}
    empty = build_summary(config, {"inputs": 6, "embeddings": 6}, sum_counts([]), [])
    assert (empty["errors"], empty["errors_by_stage"], empty["reconciled"]) == (0, {}, True)


def test_embed_summary_reads_counts_and_the_commit_waits_for_every_output():
    from medprep.pipelines.graphs.embed import EmbedConfig, build

    config = EmbedConfig(
        input="in",
        model="m",
        output_dir="o",
        model_name="m",
        model_hash="h",
        encoder_info="{}",
        input_format="parquet",
        input_ranges=(("parquet/train-00000-of-00001.parquet", 0, 4),),
        shard_plan=(("train", 1),),
        commit_in_pipeline=True,
    )
    p = beam.Pipeline()
    build(p, config)
    found = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            found[node.full_label] = node

    p.visit(Visitor())
    summary_inputs = {s.pvalue.producer.full_label for s in found["Summary"].side_inputs}
    assert summary_inputs == {"Shards/Write/AllShards", "Errors/AllErrorFiles"}
    # its main input: the stats and the error lines' counts in one CombineGlobally, one dict, never a list
    assert found["Summary"].inputs[0].producer.full_label == "Counts/Sum/InjectDefault"
    waits = {s.pvalue.producer.full_label for s in found["Commit"].side_inputs}
    assert waits == {"Shards/Write/AllShards", "Errors/AllErrorFiles"}
    assert found["Commit"].inputs[0].producer.full_label == "Summary"
    assert found["Shards/Stage"].inputs[0].producer.full_label == "Rows/ParDo(ToRows)"  # staged where made
