"""Read `medprep embed` outputs back: rows from ArrayRecord or Parquet shards, or one matrix per field.

from medprep.schemas.embedding_readers import read_embeddings, embedding_matrix
for row in read_embeddings("EMB/", split="train"):    # or EMB/parquet, a shard file
    row["example_id"], row["image_index"], row["embedding"]   # float32 (D,)
keys, X = embedding_matrix("EMB/", split="train")        # [(example_id, image_index)], float32 (N, D)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray

from medprep.schemas.embedding_codec import decode_embedding_row, rows_from_batch
from medprep.schemas.readers import ARRAYRECORD_SUFFIX, shard_files


def read_embedding_arrayrecord_shard(path: str) -> Iterator[dict[str, Any]]:
    """The embedding rows of one ArrayRecord shard, in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        n = reader.num_records()
        for start in range(0, n, 64):
            for data in reader.read(list(range(start, min(n, start + 64)))):
                yield decode_embedding_row(data)
    finally:
        reader.close()


def read_embedding_parquet_shard(path: str) -> Iterator[dict[str, Any]]:
    """The embedding rows of one Parquet shard, in order."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        yield from rows_from_batch(batch)


def read_embeddings(path: str, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Embedding rows (schemas.embedding_fields; `embedding` and `tokens` as float32 arrays or None)
    from a shard file or an output folder (local)."""
    for f in shard_files(path, split):
        arrayrecord = f.endswith(ARRAYRECORD_SUFFIX)
        yield from (read_embedding_arrayrecord_shard(f) if arrayrecord else read_embedding_parquet_shard(f))


def embedding_matrix(
    path: str, split: str | None = None, field: str = "embedding"
) -> tuple[list[tuple[str, int]], NDArray[np.float32]]:
    """([(example_id, image_index), ...], float32 matrix): the pooled embeddings (or, with field="tokens",
    the token grids stacked) of every row, in shard order."""
    keys, values = [], []
    for row in read_embeddings(path, split):
        if row[field] is None:
            raise ValueError(f"{path}: rows hold no {field!r} (see the run's --pooling)")
        keys.append((row["example_id"], row["image_index"]))
        values.append(row[field])
    return keys, (np.stack(values) if values else np.zeros((0, 0), np.float32))
