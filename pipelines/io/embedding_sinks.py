"""Sharded sinks for embedding rows, with the layout and determinism of `pipelines.io.sinks`.

Rows go to shard example_id mod N of their split (`sinks.shard_of`, so an example's images and a
slide record's patches stay in one shard), sorted by (example_id, image_index) inside it; ArrayRecord
shards are written by the records' ArrayRecord writer (`sinks.FORMATS`), Parquet shards in the
embedding schema.
"""

from __future__ import annotations

import math

import apache_beam as beam
import pyarrow.parquet as pq

from medprep.pipelines.io.outputs import join, shard_name, write_via_local
from medprep.pipelines.io.sinks import FORMATS, TARGET_SHARD_BYTES, shard_of
from medprep.schemas.embedding_codec import decode_embedding_row, embedding_arrow_schema, embedding_table

FORMAT_NAMES = ("arrayrecord", "parquet")  # --formats of medprep embed
ROW_GROUP_BYTES = 16 << 20  # Parquet row groups of about this many serialized bytes
ROW_METADATA_BYTES = 1536  # keys, model fields, normalization and image_info of one row


def row_bytes_estimate(embedding_dim: int, token_values: int) -> int:
    """Serialized size of one row: float32 values plus its metadata."""
    return 4 * (embedding_dim + token_values) + ROW_METADATA_BYTES


def plan_embedding_shards(expected_rows: dict[str, int], requested: int, bytes_per_row: int) -> dict[str, int]:
    """Shards per split: the requested number (0 = about 128 MiB each), never more than the split's rows."""
    plan = {}
    for split, rows in sorted(expected_rows.items()):
        rows = max(1, rows)
        n = requested if requested > 0 else math.ceil(rows * bytes_per_row / TARGET_SHARD_BYTES)
        plan[split] = max(1, min(n, rows))
    return plan


def row_key(example_id: str, image_index: int) -> str:
    """The sort key of a row inside its shard (its example_id first, so shard_of applies)."""
    return f"{example_id}/{image_index:06d}"


def _write_parquet(path: str, rows: list[bytes]) -> int:
    schema = embedding_arrow_schema()
    compression = {name: "zstd" for name in schema.names}
    compression["embedding"] = compression["tokens"] = "none"  # float32 noise: zstd saves ~7 % for its CPU
    per_group = max(1, min(4096, ROW_GROUP_BYTES // max(1, max((len(r) for r in rows), default=1))))

    def write(local: str) -> None:
        with pq.ParquetWriter(local, schema, compression=compression) as writer:
            for start in range(0, len(rows), per_group):
                group = [decode_embedding_row(data) for data in rows[start : start + per_group]]
                for row in group:  # back to the written form: flat floats
                    row["embedding"] = [] if row["embedding"] is None else row["embedding"]
                    row["tokens"] = [] if row["tokens"] is None else row["tokens"].reshape(-1)
                writer.write_table(embedding_table(group), row_group_size=per_group)

    return write_via_local(path, write)


def _assign_shard(row: tuple[str, str, bytes], plan: dict) -> tuple:
    split, key, data = row
    n = plan.get(split, 1)
    return (split, shard_of(key, n), n), (key, data)


class _WriteEmbeddingShard(beam.DoFn):
    def __init__(self, output_dir: str, formats: tuple):
        self.output_dir, self.formats = output_dir, formats

    def process(self, element):
        (split, index, count), values = element
        rows = [data for _, data in sorted(values)]
        for fmt in self.formats:
            spec = FORMATS[fmt]
            rel = join(spec.folder, shard_name(split, index, count, spec.suffix))
            path = join(self.output_dir, rel)
            # ArrayRecord holds serialized tf.train.Examples of any schema: the records' writer serves.
            size = spec.write(path, rows, "") if fmt == "arrayrecord" else _write_parquet(path, rows)
            yield {
                "format": fmt,
                "split": split,
                "shard": index,
                "of": count,
                "path": rel,
                "records": len(rows),
                "bytes": size,
            }


def _empty_shards(split_plan, written, output_dir, formats):
    split, n = split_plan
    done = {(f["split"], f["shard"]) for f in written}
    for index in range(n):
        if (split, index) not in done:
            yield from _WriteEmbeddingShard(output_dir, formats).process(((split, index, n), []))


class WriteEmbeddingShards(beam.PTransform):
    """(rows, plan) -> shard files in every format; one dict per file written.

    rows: (split, row_key, serialized row); plan: a one-element PCollection {split: shard count}.
    """

    def __init__(self, output_dir: str, formats: tuple):
        super().__init__()
        self.output_dir, self.formats = output_dir, formats

    def expand(self, pcolls):
        rows, plan = pcolls
        written = (
            rows
            | "AssignShard"
            >> beam.Map(_assign_shard, beam.pvalue.AsSingleton(plan)).with_output_types(
                tuple[tuple[str, int, int], tuple[str, bytes]]
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteEmbeddingShard(self.output_dir, self.formats))
        )
        empty = (
            plan
            | "Splits" >> beam.FlatMap(lambda p: sorted(p.items()))
            | "EmptyShards" >> beam.FlatMap(_empty_shards, beam.pvalue.AsList(written), self.output_dir, self.formats)
        )
        return (written, empty) | "AllShards" >> beam.Flatten()
