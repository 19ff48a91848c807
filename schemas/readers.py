"""Read medprep outputs back: records from ArrayRecord or Parquet shards, random access for Grain/PyTorch."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow.parquet as pq

from medprep.schemas.arrow import row_to_record
from medprep.schemas.example_codec import decode_example

ARRAYRECORD_SUFFIX = ".array_record"
PARQUET_SUFFIX = ".parquet"


def shard_files(
    path: str, split: str | None = None, suffixes: tuple[str, ...] = (ARRAYRECORD_SUFFIX, PARQUET_SUFFIX)
) -> list[str]:
    """Shard files with one of `suffixes` under `path` (a file, a format folder, or an output folder), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    for sub in ("", "arrayrecord", "parquet"):
        folder = os.path.join(path, sub)
        files = sorted(f for suffix in suffixes for f in glob.glob(os.path.join(folder, "*" + suffix)))
        if split is not None:
            files = [f for f in files if os.path.basename(f).startswith(split + "-")]
        if files:
            return files
    raise FileNotFoundError(
        f"no {' or '.join(suffixes)} shards under {path}" + (f" for split {split!r}" if split else "")
    )


def read_arrayrecord_shard(path: str) -> Iterator[dict[str, Any]]:
    """The records of one ArrayRecord shard, in order."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        n = reader.num_records()
        for start in range(0, n, 64):
            for data in reader.read(list(range(start, min(n, start + 64)))):
                yield decode_example(data)
    finally:
        reader.close()


def read_parquet_shard(path: str) -> Iterator[dict[str, Any]]:
    """The records of one Parquet shard, in order."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=16):
        for row in batch.to_pylist():
            yield row_to_record(row)


def read_records(path: str, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Iterate record dicts (images as encoded bytes) from a shard file or folder."""
    for f in shard_files(path, split):
        yield from (read_arrayrecord_shard(f) if f.endswith(ARRAYRECORD_SUFFIX) else read_parquet_shard(f))


class ArrayRecordSource:
    """Random access over ArrayRecord shards: len() and [i] -> record dict.

    Satisfies Grain's RandomAccessDataSource protocol and PyTorch's map-style Dataset.
    Readers are opened lazily per process, so the object pickles to worker processes.
    """

    def __init__(self, paths: str | Sequence[str], split: str | None = None):
        files = [paths] if isinstance(paths, str) else list(paths)
        self._files = [f for p in files for f in shard_files(p, split, (ARRAYRECORD_SUFFIX,))]
        if not self._files:
            raise FileNotFoundError(f"no ArrayRecord shards in {paths}")
        from array_record.python.array_record_module import ArrayRecordReader

        self._counts: list[int] = []
        for f in self._files:
            r = ArrayRecordReader(f)
            self._counts.append(r.num_records())
            r.close()
        self._starts = [sum(self._counts[:i]) for i in range(len(self._counts))]
        self._readers: dict[int, Any] = {}  # shard -> ArrayRecordReader, opened in this process

    def __len__(self) -> int:
        return sum(self._counts)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state

    def _locate(self, index: int) -> tuple[int, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = max(i for i, s in enumerate(self._starts) if s <= index)
        return shard, index - self._starts[shard]

    def read_bytes(self, index: int) -> bytes:
        """The serialized tf.train.Example at `index`."""
        from array_record.python.array_record_module import ArrayRecordReader

        shard, offset = self._locate(index)
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = ArrayRecordReader(self._files[shard], "readahead_buffer_size:0")
        data: bytes = reader.read([offset])[0]
        return data

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_example(self.read_bytes(index))

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self._files)} shards, {len(self)} records)"


def grain_source(path: str, split: str | None = None) -> ArrayRecordSource:
    """A Grain-compatible random-access source of record dicts over ArrayRecord shards."""
    return ArrayRecordSource(path, split)


def arrayrecord_files(path: str, split: str | None = None) -> list[str]:
    """The ArrayRecord shard paths under an output folder (for grain.python.ArrayRecordDataSource)."""
    return shard_files(path, split, (ARRAYRECORD_SUFFIX,))


def hf_dataset(path: str, split: str = "train") -> Any:  # a datasets.Dataset (imported when called)
    """The Parquet shards of one split as a Hugging Face `datasets.Dataset` (images decode to PIL)."""
    import datasets

    files = shard_files(path, split, (PARQUET_SUFFIX,))
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)
