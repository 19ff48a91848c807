"""Deterministic sharded sinks: ArrayRecord (tf.train.Example) and Parquet, plus errors JSONL.

Examples go to shard hash(example_id) mod N of their split and are sorted by example_id
inside a shard, so the same inputs and options give byte-identical files on any runner.
"""
from __future__ import annotations

import io
import json
import math

import apache_beam as beam
import pyarrow.parquet as pq

from pipelines.outputs import join, shard_name, write_bytes, write_via_local
from schemas.arrow import to_table
from schemas.example_codec import encode_example

TARGET_SHARD_BYTES = 256 << 20
PARQUET_ROWS_PER_GROUP = 32
FORMAT_DIRS = {"arrayrecord": ("arrayrecord", ".array_record"), "parquet": ("parquet", ".parquet")}


def record_nbytes(record: dict) -> int:
    """Approximate stored size of a record: its image bytes plus 1 KiB."""
    return sum(len(b) for b in record["images"]) + 1024


def num_shards_for(count: int, nbytes: int, requested: int) -> int:
    """Shards for one split: the requested number (0 = by size, 256 MiB each), never more than examples."""
    n = requested if requested > 0 else math.ceil(nbytes / TARGET_SHARD_BYTES)
    return max(1, min(n, count))


def shard_of(example_id: str, n: int) -> int:
    """Shard index of an example: its hex id mod n."""
    return int(example_id[:16], 16) % n


def _sum_pairs(pairs):
    count = nbytes = 0
    for c, b in pairs:
        count += c
        nbytes += b
    return count, nbytes


def _write_arrayrecord(path: str, records: list[dict]) -> int:
    from array_record.python.array_record_module import ArrayRecordWriter

    def write(local: str) -> None:
        writer = ArrayRecordWriter(local, "group_size:1")
        try:
            for r in records:
                writer.write(encode_example(r))
        finally:
            writer.close()

    return write_via_local(path, write)


def _write_parquet(path: str, records: list[dict], extension: str) -> int:
    buf = io.BytesIO()
    table = to_table(records, extension)
    pq.write_table(table, buf, row_group_size=PARQUET_ROWS_PER_GROUP, compression="zstd")
    data = buf.getvalue()
    write_bytes(path, data)
    return len(data)


class _WriteShard(beam.DoFn):
    def __init__(self, output_dir: str, formats: tuple, extension: str):
        self.output_dir, self.formats, self.extension = output_dir, formats, extension

    def process(self, element):
        (split, index, count), values = element
        records = sorted((r for r in values if r is not None), key=lambda r: r["example_id"])
        for fmt in self.formats:
            folder, suffix = FORMAT_DIRS[fmt]
            path = join(self.output_dir, folder, shard_name(split, index, count, suffix))
            if fmt == "arrayrecord":
                size = _write_arrayrecord(path, records)
            else:
                size = _write_parquet(path, records, self.extension)
            yield {"format": fmt, "split": split, "shard": index, "of": count,
                   "path": join(folder, shard_name(split, index, count, suffix)),
                   "records": len(records), "bytes": size}


class WriteShards(beam.PTransform):
    """records -> shard files in every format; outputs one dict per file written."""

    def __init__(self, output_dir: str, formats: tuple, num_shards: int, extension: str):
        super().__init__()
        self.output_dir, self.formats, self.num_shards, self.extension = output_dir, formats, num_shards, extension

    def expand(self, records):
        requested = self.num_shards
        plan = (
            records
            | "SizeBySplit" >> beam.Map(lambda r: (r["split"], (1, record_nbytes(r))))
            | "SumBySplit" >> beam.CombinePerKey(_sum_pairs)
            | "PlanShards" >> beam.MapTuple(lambda split, cb: (split, num_shards_for(cb[0], cb[1], requested)))
        )
        assigned = records | "AssignShard" >> beam.Map(
            lambda r, p: ((r["split"], shard_of(r["example_id"], p[r["split"]]), p[r["split"]]), r),
            beam.pvalue.AsDict(plan),
        )
        every_shard = plan | "EveryShard" >> beam.FlatMapTuple(
            lambda split, n: [((split, i, n), None) for i in range(n)])
        return (
            (assigned, every_shard)
            | "Both" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self.output_dir, self.formats, self.extension))
        )


def _write_errors(lines: list[dict], output_dir: str) -> dict:
    body = "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"
                   for line in sorted(lines, key=lambda d: (d["row"], d["ref"], d["stage"], d["message"])))
    path = join("errors", shard_name("errors", 0, 1, ".jsonl"))
    write_bytes(join(output_dir, path), body.encode("utf-8"))
    return {"path": path, "lines": len(lines)}


class WriteErrors(beam.PTransform):
    """error lines -> errors/errors-00000-of-00001.jsonl (sorted; written even when empty)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, errors):
        return (errors
                | "AllErrors" >> beam.combiners.ToList()
                | "WriteErrorFile" >> beam.Map(_write_errors, self.output_dir))
