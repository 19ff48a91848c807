"""Streaming reads of a finished output folder where it lives (local or gs://), for verify and inspect.

Everything goes through Beam's FileSystems, one record at a time, so memory does not grow with the
dataset: summary.json is read whole (it is small), errors/ line by line, Parquet shards through a
seekable stream (pyarrow fetches the footer, then one row group's column chunks at a time; on gs://
these are ranged reads of the object) and ArrayRecord shards record by record. ArrayRecord's reader
(C++) opens local paths only: a gs:// ArrayRecord shard is streamed to a temporary file, read and
deleted before the next one, so at most one shard is ever on local disk and none is held in memory.
Nothing here opens an input of the run: only the files that summary.json lists under the output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from medprep.pipelines.io.outputs import join

PARQUET_BATCH_ROWS = 4  # rows decoded to Python at a time
PARQUET_BUFFER = 1 << 20  # bytes pyarrow reads per request within a column chunk
ARRAYRECORD_OPTIONS = "readahead_buffer_size:4M,max_parallelism:1"  # one bounded read-ahead buffer
COPY_CHUNK = 8 << 20


def is_remote(path: str) -> bool:
    return "://" in path


def open_binary(path: str) -> IO[bytes]:
    """A seekable binary stream of one file (local open, or Beam's ranged-read stream for gs://)."""
    if not is_remote(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems

    stream: IO[bytes] = FileSystems.open(path, compression_type="uncompressed")
    return stream


def is_file(path: str) -> bool:
    """A regular file (local) or an object (gs://); never opens it."""
    if not is_remote(path):
        return os.path.isfile(path)
    from apache_beam.io.filesystems import FileSystems

    try:
        return bool(FileSystems.exists(path))
    except Exception:  # unreachable store: reported as missing by the caller
        return False


def read_summary(output_dir: str) -> dict[str, Any] | None:
    """summary.json as a dict, or None when there is none (a run that did not complete)."""
    path = join(output_dir, "summary.json")
    if not is_file(path):
        return None
    with open_binary(path) as fh:
        summary: dict[str, Any] = json.loads(fh.read())
    return summary


def iter_lines(path: str) -> Iterator[str]:
    """The lines of a text file (UTF-8), one at a time, without their line ends."""
    with open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        for line in text:
            yield line.rstrip("\r\n")


def _record_rows(batch: Any) -> list[dict[str, Any]]:
    from medprep.schemas.arrow import row_to_record

    return [row_to_record(row) for row in batch.to_pylist()]


def _parquet_records(path: str, rows_of: Callable[[Any], list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with open_binary(path) as fh:
        pf = pq.ParquetFile(fh, buffer_size=PARQUET_BUFFER, pre_buffer=False)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from rows_of(batch)


@contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """`path` itself when local; else a temporary local copy of it (streamed in chunks), deleted afterwards."""
    if not is_remote(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="medprep-shard-")
    try:
        local = os.path.join(folder, "shard")
        with open_binary(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _arrayrecord_records(path: str, decode: Callable[[bytes], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    from array_record.python.array_record_module import ArrayRecordReader

    with _local_copy(path) as local:
        reader = ArrayRecordReader(local, ARRAYRECORD_OPTIONS)
        try:
            for _ in range(reader.num_records()):
                yield decode(reader.read())
        finally:
            reader.close()


def iter_shard(
    path: str,
    fmt: str,
    decode: Callable[[bytes], dict[str, Any]] | None = None,
    rows_of: Callable[[Any], list[dict[str, Any]]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of one shard ('arrayrecord' or 'parquet'), in order, one at a time. Another schema's
    shards (embed's rows) pass its decoders: decode (serialized record -> dict), rows_of (Arrow batch -> dicts)."""
    from medprep.schemas.example_codec import decode_example

    if fmt == "arrayrecord":
        yield from _arrayrecord_records(path, decode or decode_example)
    else:
        yield from _parquet_records(path, rows_of or _record_rows)


def shard_format(path: str) -> str:
    """'arrayrecord' or 'parquet' from a shard's name."""
    return "parquet" if path.endswith(".parquet") else "arrayrecord"
