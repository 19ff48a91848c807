"""Sharded sinks for embedding rows: the records' staged, streaming shard writing (`pipelines.io.sinks`)
with the embedding formats.

Rows go to shard example_id mod N of their split (`sinks.shard_of`, so an example's images and a
slide record's patches stay in one shard), sorted by (example_id, image_index) inside it. A row is
serialized and appended to a part file where it is made (`sinks.StageRecords` with `embedding_entry`);
only its location moves on, and each shard is written streaming from the parts: ArrayRecord record by
record by the records' writer, Parquet in the embedding schema one row group at a time.
"""

from __future__ import annotations

import math
from typing import Any

import apache_beam as beam
import pyarrow as pa

from medprep.pipelines.io.outputs import join
from medprep.pipelines.io.sinks import (
    FORMATS,
    PARTS_FOLDER,
    TARGET_SHARD_BYTES,
    OutputFormat,
    ShardRecords,
    StageRecords,
    WriteShards,
    write_parquet,
)
from medprep.schemas.embedding_codec import (
    decode_embedding_row,
    embedding_arrow_schema,
    embedding_table,
    encode_embedding_row,
)

ROW_GROUP_BYTES = 16 << 20  # Parquet row groups of about this many serialized bytes
MAX_ROWS_PER_GROUP = 4096
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


def embedding_entry(row: dict[str, Any]) -> tuple[str, str, bytes]:
    """(split, row key, serialized row) of a row dict (schemas.embedding_fields): what is staged."""
    return row["split"], row_key(row["example_id"], row["image_index"]), encode_embedding_row(row)


def rows_per_group(largest_row: int) -> int:
    """Rows per Parquet row group of a shard whose largest serialized row has `largest_row` bytes."""
    return max(1, min(MAX_ROWS_PER_GROUP, ROW_GROUP_BYTES // max(1, largest_row)))


def _arrow_rows(group: list[bytes]) -> pa.Table:
    rows = [decode_embedding_row(data) for data in group]
    for row in rows:  # back to the written form: flat floats
        row["embedding"] = [] if row["embedding"] is None else row["embedding"]
        row["tokens"] = [] if row["tokens"] is None else row["tokens"].reshape(-1)
    return embedding_table(rows)


def parquet_shard(path: str, rows: ShardRecords, extension: str) -> int:
    """A Parquet shard of embedding rows; row groups of about ROW_GROUP_BYTES, sized by the shard's
    largest row. The vectors are left uncompressed: float32 noise, zstd saves ~7 % for its CPU."""
    per_group = rows_per_group(rows.largest)
    return write_parquet(path, rows, embedding_arrow_schema(), ("embedding", "tokens"), per_group, _arrow_rows)


# The formats of medprep embed (--formats). ArrayRecord holds serialized tf.train.Examples of any
# schema: the records' writer serves.
EMBEDDING_FORMATS: dict[str, OutputFormat] = {
    "arrayrecord": FORMATS["arrayrecord"],
    "parquet": OutputFormat("parquet", ".parquet", parquet_shard),
}
FORMAT_NAMES = tuple(EMBEDDING_FORMATS)


class WriteEmbeddingShards(beam.PTransform):
    """(rows, plan) -> shard files in every format; one dict per file written.

    rows: row dicts (schemas.embedding_fields), staged to part files under output_dir/PARTS_FOLDER
    where they are made; plan: a one-element PCollection {split: shard count}. The parts folder is
    left for the caller to remove once every shard is written (sinks.remove_parts).
    """

    def __init__(self, output_dir: str, formats: tuple):
        super().__init__()
        self.output_dir, self.formats = output_dir, formats

    def expand(self, pcolls):
        rows, plan = pcolls
        parts = join(self.output_dir, PARTS_FOLDER)
        staged = rows | "Stage" >> beam.ParDo(StageRecords(parts, entry=embedding_entry))
        return (staged, plan) | "Write" >> WriteShards(self.output_dir, self.formats, "", EMBEDDING_FORMATS)
