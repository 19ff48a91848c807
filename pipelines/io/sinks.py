"""Deterministic sharded sinks: ArrayRecord (tf.train.Example) and Parquet, plus errors JSONL.

Examples go to shard hash(example_id) mod N of their split and are sorted by example_id
inside a shard, so the same inputs and options give byte-identical files on any runner.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
import pyarrow.parquet as pq

from medprep.pipelines.io.outputs import join, shard_name, write_bytes, write_via_local
from medprep.schemas.arrow import arrow_schema, to_table
from medprep.schemas.example_codec import decode_example, encode_example

TARGET_SHARD_BYTES = 128 << 20
PARQUET_ROWS_PER_GROUP = 32


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


def serialize(record: dict) -> tuple[str, str, bytes]:
    """record -> (split, example_id, tf.train.Example bytes): what moves between stages and workers."""
    return record["split"], record["example_id"], encode_example(record)


def _write_arrayrecord(path: str, examples: list[bytes]) -> int:
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


def _write_parquet(path: str, examples: list[bytes], extension: str) -> int:
    """One row group of PARQUET_ROWS_PER_GROUP examples at a time, so a shard is never held twice."""
    schema = arrow_schema()
    compression = {name: "zstd" for name in schema.names}
    compression["images"] = "none"  # already-compressed image bytes

    def write(local: str) -> None:
        with pq.ParquetWriter(local, schema, compression=compression) as writer:
            for start in range(0, len(examples), PARQUET_ROWS_PER_GROUP):
                group = [decode_example(data) for data in examples[start : start + PARQUET_ROWS_PER_GROUP]]
                writer.write_table(to_table(group, extension), row_group_size=PARQUET_ROWS_PER_GROUP)

    return write_via_local(path, write)


@dataclass(frozen=True)
class OutputFormat:
    """An output format: its folder under OUT, its file suffix, and the writer of one shard
    (path, serialized tf.train.Example records, the Parquet schema extension) -> bytes written."""

    folder: str
    suffix: str
    write: Callable[[str, list, str], int]


def _arrayrecord_shard(path: str, examples: list[bytes], extension: str) -> int:
    return _write_arrayrecord(path, examples)


# The output formats by --formats name. A new format is a writer function plus one line here.
FORMATS: dict[str, OutputFormat] = {
    "arrayrecord": OutputFormat("arrayrecord", ".array_record", _arrayrecord_shard),
    "parquet": OutputFormat("parquet", ".parquet", lambda path, examples, ext: _write_parquet(path, examples, ext)),
}


class _WriteShard(beam.DoFn):
    def __init__(self, output_dir: str, formats: tuple, extension: str):
        self.output_dir, self.formats, self.extension = output_dir, formats, extension

    def process(self, element):
        (split, index, count), values = element
        examples = [data for _, data in sorted(values)]
        for fmt in self.formats:
            spec = FORMATS[fmt]
            path = join(self.output_dir, spec.folder, shard_name(split, index, count, spec.suffix))
            size = spec.write(path, examples, self.extension)
            yield {
                "format": fmt,
                "split": split,
                "shard": index,
                "of": count,
                "path": join(spec.folder, shard_name(split, index, count, spec.suffix)),
                "records": len(examples),
                "bytes": size,
            }


def _assign_shard(example: tuple[str, str, bytes], plan: dict) -> tuple:
    split, example_id, data = example
    n = plan.get(split, 1)
    return (split, shard_of(example_id, n), n), (example_id, data)


def _empty_shards(split_plan, written, output_dir, formats, extension):
    """Write the shards of a split that received no example (so every split has all N files)."""
    split, n = split_plan
    done = {(f["split"], f["shard"]) for f in written}
    for index in range(n):
        if (split, index) not in done:
            yield from _WriteShard(output_dir, formats, extension).process(((split, index, n), []))


class WriteShards(beam.PTransform):
    """(examples, plan) -> shard files in every format; one dict per file written.

    examples: (split, example_id, Example bytes); plan: a one-element PCollection
    {split: shard count}, computed from the inputs, so shard keys are assigned where
    records are made and no stage waits for every record before the shuffle.
    """

    def __init__(self, output_dir: str, formats: tuple, extension: str):
        super().__init__()
        self.output_dir, self.formats, self.extension = output_dir, formats, extension

    def expand(self, pcolls):
        examples, plan = pcolls
        written = (
            examples
            | "AssignShard"
            >> beam.Map(_assign_shard, beam.pvalue.AsSingleton(plan)).with_output_types(
                tuple[tuple[str, int, int], tuple[str, bytes]]
            )
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShard(self.output_dir, self.formats, self.extension))
        )
        empty = (
            plan
            | "Splits" >> beam.FlatMap(lambda p: sorted(p.items()))
            | "EmptyShards"
            >> beam.FlatMap(_empty_shards, beam.pvalue.AsList(written), self.output_dir, self.formats, self.extension)
        )
        return (written, empty) | "AllShards" >> beam.Flatten()


def _write_errors(lines: list[dict], output_dir: str) -> dict:
    body = "".join(
        json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"
        for line in sorted(lines, key=lambda d: (d["row"], d["ref"], d["stage"], d["message"]))
    )
    path = join("errors", shard_name("errors", 0, 1, ".jsonl"))
    write_bytes(join(output_dir, path), body.encode("utf-8"))
    return {"path": path, "lines": len(lines)}


class WriteErrors(beam.PTransform):
    """error lines -> errors/errors-00000-of-00001.jsonl (sorted; written even when empty)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, errors):
        return (
            errors
            | "AllErrors" >> beam.combiners.ToList()
            | "WriteErrorFile" >> beam.Map(_write_errors, self.output_dir)
        )
