"""Deterministic sharded sinks: ArrayRecord (tf.train.Example) and Parquet, plus errors JSONL.

Examples go to shard hash(example_id) mod N of their split and are sorted by example_id
inside a shard, so the same inputs and options give byte-identical files on any runner.

Memory per run and per worker stays bounded whatever the run's size: a record is serialized and
appended to a part file in the output's staging folder where it is made (`StageRecords`), and only
its location (a `StagedRecord`: split, example_id, part, offset, size) moves between stages. A shard
is then written streaming: its locations are sorted by example_id and each record is read back from
its part and handed to the format's writer, so at most one Parquet row group is held at a time.

The same machinery writes `medprep embed`'s rows (pipelines/io/embedding_sinks.py): StageRecords takes
the function that serializes an element (`entry`), WriteShards the table of output formats.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from medprep.pipelines.io.outputs import join, shard_name, write_via_local
from medprep.schemas.arrow import arrow_schema, to_table
from medprep.schemas.example_codec import decode_example, encode_example

TARGET_SHARD_BYTES = 128 << 20
PARQUET_ROWS_PER_GROUP = 32
PARTS_FOLDER = ".records-tmp"  # under the staging folder; removed before summary.json is written
PART_BYTES = 64 << 20  # a part file is closed (and named) once it holds about this many bytes
ERROR_LINES_PER_SHARD = 50_000  # error lines are sorted per shard: this bounds what one worker sorts
_REMOTE_READ_BYTES = 1 << 20  # read buffer for a part on an object store (records are read by range)


def image_bytes_estimate(image_size: int, image_format: str) -> int:
    """Typical encoded size of one output image (PNG level 1 ~25 % of raw RGB, JPEG q95 ~8 %)."""
    return int(image_size * image_size * 3 * (0.08 if image_format == "jpeg" else 0.25))


def plan_shards(n_inputs: int, requested: int, fractions: dict[str, float], bytes_per_input: int) -> dict[str, int]:
    """Shards per split, known before any record exists: the requested number (0 = about
    128 MiB each, from the input count), never more than the split's expected inputs."""
    plan = {}
    for split, fraction in fractions.items():
        expected = max(1, math.ceil(n_inputs * fraction))
        n = requested if requested > 0 else math.ceil(expected * bytes_per_input / TARGET_SHARD_BYTES)
        plan[split] = max(1, min(n, expected))
    return plan


def shard_of(example_id: str, n: int) -> int:
    """Shard index of an example: its hex id mod n."""
    return int(example_id[:16], 16) % n


# --- staging: records to part files where they are made, locations onward --------------------------


@dataclass(frozen=True)
class StagedRecord:
    """Where one serialized record waits for its shard: bytes [offset, offset + size) of a part file.

    example_id is the record's sort key inside its shard; its first 16 hex digits choose the shard
    (shard_of). For records it is the example_id; for rows of which an example has several (embed:
    one per image) the example_id followed by the row's index (embedding_sinks.row_key)."""

    split: str
    example_id: str
    part: str  # file name under the parts folder
    offset: int
    size: int


class _PartFile:
    """A part being written: a local file, then named from the ids it holds (sha-256 of them in order),
    so a retried bundle that makes the same records overwrites its own part rather than adding one."""

    def __init__(self, parts_dir: str):
        self.parts_dir = parts_dir
        if "://" in parts_dir:
            handle, self.local = tempfile.mkstemp(prefix="medprep-part-")
            os.close(handle)
        else:
            os.makedirs(parts_dir, exist_ok=True)
            self.local = os.path.join(parts_dir, f".tmp-{uuid.uuid4().hex}")
        self.fh: IO[bytes] = open(self.local, "wb")  # closed by close() or discard()
        self.entries: list[tuple[str, str, int, int]] = []
        self.digest = hashlib.sha256()
        self.size = 0

    def add(self, split: str, example_id: str, data: bytes) -> None:
        self.fh.write(data)
        self.entries.append((split, example_id, self.size, len(data)))
        self.digest.update(f"{split}/{example_id}/{len(data)}\n".encode())
        self.size += len(data)

    def close(self) -> list[StagedRecord]:
        """Name the part, move it into the parts folder; the locations of its records."""
        self.fh.close()
        name = self.digest.hexdigest()[:32] + ".records"
        dest = join(self.parts_dir, name)
        if "://" in dest:
            with open(self.local, "rb") as src, FileSystems.create(dest) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.remove(self.local)
        else:
            os.replace(self.local, dest)
        return [StagedRecord(split, eid, name, offset, size) for split, eid, offset, size in self.entries]

    def discard(self) -> None:
        self.fh.close()
        if os.path.exists(self.local):
            os.remove(self.local)


def example_entry(record: dict) -> tuple[str, str, bytes]:
    """(split, example_id, tf.train.Example bytes) of a record: what StageRecords stages by default."""
    return record["split"], record["example_id"], encode_example(record)


class StageRecords(beam.DoFn):
    """element -> StagedRecord: the element's bytes (`entry(element)` = (split, sort key, bytes); a
    record's tf.train.Example by default) go to a part file of this bundle (closed every PART_BYTES
    and at the bundle's end); only the location moves on, so no runner holds image bytes between
    stages and none cross a shuffle."""

    def __init__(
        self,
        parts_dir: str,
        part_bytes: int = PART_BYTES,
        entry: Callable[[Any], tuple[str, str, bytes]] = example_entry,
    ):
        self.parts_dir, self.part_bytes, self.entry = parts_dir, part_bytes, entry
        self._part: _PartFile | None = None

    def start_bundle(self) -> None:
        self._drop()  # left over from a bundle that failed part-way

    def process(self, element: Any) -> Iterator[StagedRecord]:
        if self._part is None:
            self._part = _PartFile(self.parts_dir)
        self._part.add(*self.entry(element))
        if self._part.size >= self.part_bytes:
            yield from self._close()

    def finish_bundle(self) -> Iterator[Any]:
        for staged in self._close():
            yield GlobalWindows.windowed_value(staged)

    def teardown(self) -> None:
        self._drop()

    def _close(self) -> list[StagedRecord]:
        part, self._part = self._part, None
        return part.close() if part else []

    def _drop(self) -> None:
        part, self._part = self._part, None
        if part:
            part.discard()


class PartReader:
    """Reads staged records back, a few part files open at a time."""

    def __init__(self, parts_dir: str, keep_open: int = 8):
        self.parts_dir, self.keep_open = parts_dir, keep_open
        self._open: OrderedDict[str, IO[bytes]] = OrderedDict()

    def read(self, staged: StagedRecord) -> bytes:
        fh = self._handle(staged.part)
        fh.seek(staged.offset)
        data = fh.read(staged.size)
        if len(data) != staged.size:
            raise OSError(f"part {staged.part} ends before byte {staged.offset + staged.size}")
        return data

    def records(self, staged: Iterable[StagedRecord]) -> Iterator[bytes]:
        """The bytes of each staged record, in the given order."""
        return (self.read(s) for s in staged)

    def shard(self, staged: list[StagedRecord]) -> ShardRecords:
        """The records of one shard, in the given order, read as they are iterated."""
        return ShardRecords(self, staged)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def _handle(self, part: str) -> IO[bytes]:
        if part in self._open:
            self._open.move_to_end(part)
            return self._open[part]
        if len(self._open) >= self.keep_open:
            self._open.popitem(last=False)[1].close()
        self._open[part] = _open_part(join(self.parts_dir, part))
        return self._open[part]


class ShardRecords:
    """The serialized records of one shard in order, read back from their parts one at a time each time
    it is iterated. `largest` (bytes) is known from the locations before any record is read, so a
    writer can size its row groups by it without holding the shard."""

    def __init__(self, reader: PartReader, staged: list[StagedRecord]):
        self.reader, self.staged = reader, staged
        self.largest = max((s.size for s in staged), default=0)

    def __iter__(self) -> Iterator[bytes]:
        return self.reader.records(self.staged)

    def __len__(self) -> int:
        return len(self.staged)


def _open_part(path: str) -> IO[bytes]:
    if "://" not in path:
        return open(path, "rb")  # PartReader.close() closes it
    gcs = getattr(FileSystems.get_filesystem(path), "_gcsIO", None)
    if gcs is not None:  # Beam's default 16 MiB read-ahead would fetch 16 MiB for every record read
        return gcs().open(path, "rb", read_buffer_size=_REMOTE_READ_BYTES)
    return FileSystems.open(path, compression_type="uncompressed")


def remove_parts(parts_dir: str) -> None:
    """Delete the parts folder (every shard is written)."""
    if "://" not in parts_dir:
        shutil.rmtree(parts_dir, ignore_errors=True)
        return
    left = FileSystems.match([parts_dir.rstrip("/") + "/**"])[0].metadata_list
    if left:
        FileSystems.delete([m.path for m in left])


# --- shard files ---------------------------------------------------------------------------------


def _write_arrayrecord(path: str, examples: Iterable[bytes]) -> int:
    from array_record.python.array_record_module import ArrayRecordWriter

    def write(local: str) -> None:
        # Images are PNG/JPEG already: a second compression pass costs CPU for ~0.1 % of bytes.
        writer = ArrayRecordWriter(local, "group_size:1,uncompressed")
        try:
            for data in examples:
                writer.write(data)
        finally:
            writer.close()

    return write_via_local(path, write)


def _groups(examples: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """Consecutive lists of `size` records (the last one shorter), one list held at a time."""
    group: list[bytes] = []
    for data in examples:
        group.append(data)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def write_parquet(
    path: str,
    examples: Iterable[bytes],
    schema: pa.Schema,
    uncompressed: tuple[str, ...],
    rows_per_group: int,
    to_arrow: Callable[[list[bytes]], pa.Table],
) -> int:
    """A Parquet shard written one row group of `rows_per_group` records at a time (to_arrow: the
    serialized records of a group -> its table): only that group is held. Columns are zstd-compressed
    but those named in `uncompressed` (bytes that compress no further)."""
    compression = {name: "none" if name in uncompressed else "zstd" for name in schema.names}

    def write(local: str) -> None:
        with pq.ParquetWriter(local, schema, compression=compression) as writer:
            for group in _groups(examples, rows_per_group):
                writer.write_table(to_arrow(group), row_group_size=rows_per_group)

    return write_via_local(path, write)


def _write_parquet(path: str, examples: Iterable[bytes], extension: str) -> int:
    """Records 32 to a row group; image bytes are already compressed."""

    def to_arrow(group: list[bytes]) -> pa.Table:
        return to_table([decode_example(d) for d in group], extension)

    return write_parquet(path, examples, arrow_schema(), ("images",), PARQUET_ROWS_PER_GROUP, to_arrow)


@dataclass(frozen=True)
class OutputFormat:
    """An output format: its folder under OUT, its file suffix, and the writer of one shard
    (path, serialized tf.train.Example records in order (ShardRecords), the Parquet schema
    extension) -> bytes written. Writers consume the records as they come and hold none beyond
    what they buffer."""

    folder: str
    suffix: str
    write: Callable[[str, ShardRecords, str], int]


def arrayrecord_shard(path: str, examples: Iterable[bytes], extension: str) -> int:
    """An ArrayRecord shard of serialized tf.train.Examples of any schema, written record by record."""
    return _write_arrayrecord(path, examples)


def _parquet_shard(path: str, examples: Iterable[bytes], extension: str) -> int:
    return _write_parquet(path, examples, extension)  # looked up at call time (tests inject failures)


# The output formats by --formats name. A new format is a writer function plus one line here.
FORMATS: dict[str, OutputFormat] = {
    "arrayrecord": OutputFormat("arrayrecord", ".array_record", arrayrecord_shard),
    "parquet": OutputFormat("parquet", ".parquet", _parquet_shard),
}


class _WriteShard(beam.DoFn):
    """((split, index, count), staged records) -> one file per format, records in example_id order.

    table: the output formats by name (FORMATS when None: looked up at call time)."""

    def __init__(self, output_dir: str, formats: tuple, extension: str, table: dict[str, OutputFormat] | None = None):
        self.output_dir, self.formats, self.extension, self.table = output_dir, formats, extension, table

    def process(self, element: tuple) -> Iterator[dict]:
        (split, index, count), staged = element
        ordered = sorted(staged, key=lambda s: s.example_id)  # locations only: ~100 bytes each
        reader = PartReader(join(self.output_dir, PARTS_FOLDER))
        table = FORMATS if self.table is None else self.table
        try:
            for fmt in self.formats:
                spec = table[fmt]
                rel = join(spec.folder, shard_name(split, index, count, spec.suffix))
                size = spec.write(join(self.output_dir, rel), reader.shard(ordered), self.extension)
                yield {
                    "format": fmt,
                    "split": split,
                    "shard": index,
                    "of": count,
                    "path": rel,
                    "records": len(ordered),
                    "bytes": size,
                }
        finally:
            reader.close()


def _assign_shard(staged: StagedRecord, plan: dict) -> tuple:
    n = plan.get(staged.split, 1)
    return (staged.split, shard_of(staged.example_id, n), n), staged


def _empty_shards(split_plan, written, writer: _WriteShard):
    """Write the shards of a split that received no example (so every split has all N files)."""
    split, n = split_plan
    done = {(f["split"], f["shard"]) for f in written}
    for index in range(n):
        if (split, index) not in done:
            yield from writer.process(((split, index, n), []))


class WriteShards(beam.PTransform):
    """(staged, plan) -> shard files in every format; one dict per file written.

    staged: StagedRecord per example (its bytes wait in a part under output_dir/PARTS_FOLDER);
    plan: a one-element PCollection {split: shard count}, computed from the inputs, so shard
    keys are assigned where records are made and no stage waits for every record before the shuffle.
    table: the output formats by name (None: FORMATS, the records' formats).
    """

    def __init__(self, output_dir: str, formats: tuple, extension: str, table: dict[str, OutputFormat] | None = None):
        super().__init__()
        self.writer = _WriteShard(output_dir, formats, extension, table)

    def expand(self, pcolls):
        staged, plan = pcolls
        written = (
            staged
            | "AssignShard" >> beam.Map(_assign_shard, beam.pvalue.AsSingleton(plan))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(self.writer)
        )
        empty = (
            plan
            | "Splits" >> beam.FlatMap(lambda p: sorted(p.items()))
            | "EmptyShards" >> beam.FlatMap(_empty_shards, beam.pvalue.AsList(written), self.writer)
        )
        return (written, empty) | "AllShards" >> beam.Flatten()


# --- error lines ---------------------------------------------------------------------------------


def _error_order(line: dict) -> tuple:
    return line["row"], line["ref"], line["stage"], line["message"]


def _error_json(line: dict) -> str:
    return json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"


def error_shard_count(lines: int, per_shard: int = ERROR_LINES_PER_SHARD) -> int:
    """Error shards for a run with `lines` error lines: one per `per_shard` lines, at least one."""
    return max(1, math.ceil(lines / per_shard))


def _assign_error_shard(line: dict, n: int) -> tuple[int, dict]:
    return int(hashlib.sha256(_error_json(line).encode("utf-8")).hexdigest()[:16], 16) % n, line


def _write_error_shard(index: int, lines: Iterable[dict], n: int, output_dir: str) -> dict:
    """One error shard, its lines sorted by (row, ref, stage, message)."""
    ordered = sorted(lines, key=_error_order)
    rel = join("errors", shard_name("errors", index, n, ".jsonl"))

    def write(local: str) -> None:
        with open(local, "w", encoding="utf-8") as fh:
            for line in ordered:
                fh.write(_error_json(line))

    write_via_local(join(output_dir, rel), write)
    return {"path": rel, "lines": len(ordered)}


def _empty_error_shards(n: int, written: list[dict], output_dir: str) -> Iterator[dict]:
    done = {f["path"] for f in written}
    for index in range(n):
        if join("errors", shard_name("errors", index, n, ".jsonl")) not in done:
            yield _write_error_shard(index, [], n, output_dir)


class WriteErrors(beam.PTransform):
    """error lines -> errors/errors-SSSSS-of-NNNNN.jsonl: N from the number of lines (one shard per
    `lines_per_shard`, so a run with fewer errors has the one file errors-00000-of-00001.jsonl);
    each line goes to a shard by its content's hash and each shard is sorted by (row, ref, stage,
    message). Every shard is written, even empty. Returns one {path, lines} dict per shard."""

    def __init__(self, output_dir: str, lines_per_shard: int = ERROR_LINES_PER_SHARD, line_count=None):
        """line_count: a one-element PCollection of the number of lines, when the graph counts them
        already (else they are counted here)."""
        super().__init__()
        self.output_dir, self.lines_per_shard, self.line_count = output_dir, lines_per_shard, line_count

    def expand(self, errors):
        count = self.line_count
        if count is None:
            count = errors | "CountLines" >> beam.combiners.Count.Globally()
        n = count | "ErrorShards" >> beam.Map(error_shard_count, self.lines_per_shard)
        n_side, out_dir = beam.pvalue.AsSingleton(n), self.output_dir
        written = (
            errors
            | "AssignErrorShard" >> beam.Map(_assign_error_shard, n_side)
            | "GroupErrors" >> beam.GroupByKey()
            | "WriteErrorShard" >> beam.Map(lambda group, n, out: _write_error_shard(*group, n, out), n_side, out_dir)
        )
        empty = n | "EmptyErrorShards" >> beam.FlatMap(_empty_error_shards, beam.pvalue.AsList(written), out_dir)
        return (written, empty) | "AllErrorFiles" >> beam.Flatten()
