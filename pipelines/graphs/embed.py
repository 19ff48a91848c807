"""`medprep embed`: image embeddings and visual tokens of a finished medprep output, with RunInference.

Graph: record ranges of the input shards (known at start-up from its summary.json) -> Reshuffle ->
read each range and cut its images, in record order, into batches of --batch_size -> RunInference
(EncoderModelHandler: the encoder is loaded once per worker process, RunInference's shared model) ->
one row per image (or one error line) -> sharded ArrayRecord + Parquet, errors/, summary.json.

Outputs take the record pipelines' bounded path (pipelines/io/sinks.py): each row is serialized to a
part file in the staging folder where it is made and only its location is shuffled, shards are written
streaming from the parts; error lines go to the sharded error files and summary.json counts them with
combiners (never a list of every line); the commit waits for every output.

Batches are formed here, not by RunInference's dynamic BatchElements (the handler runs
`with_no_batching`): a vision transformer's outputs for an image change in the last bits with the
other images of its batch (measured: up to 1.5e-6 with SigLIP's pooling head), so only a fixed batch
composition gives byte-identical reruns on any number of workers. Reading, decoding, inference and
row building are fused after the Reshuffle, so image bytes never cross a shuffle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from medprep.pipelines.config import PIPELINE_VERSION
from medprep.pipelines.graphs.dead_letter import ERRORS, STATS, error_line
from medprep.pipelines.graphs.metrics import PipelineMetrics
from medprep.pipelines.graphs.progress import WorkerProgress, mark_done
from medprep.pipelines.graphs.run_counts import RunCounts, error_lines, split_counts
from medprep.pipelines.io.embedding_sinks import WriteEmbeddingShards
from medprep.pipelines.io.outputs import join, write_bytes
from medprep.pipelines.io.run_output import commit_step
from medprep.pipelines.io.sinks import ERROR_LINES_PER_SHARD, PARTS_FOLDER, WriteErrors, remove_parts
from medprep.pipelines.records.summary import summary_json, versions
from medprep.transforms.errors import strip_credentials

_LOG = logging.getLogger(__name__)
PIPELINE = "embed"
SOURCE_PIPELINES = ("images", "volumes", "slides")
BATCHES_PER_RANGE = 8  # work per Reshuffle element: about this many batches of --batch_size images
_EMBED_PACKAGES = ("torch", "transformers", "safetensors")


@dataclass(frozen=True)
class EmbedConfig:
    """Options of one `medprep embed` run, resolved and checked at start-up; picklable, hashable."""

    input: str  # a finished medprep output folder
    model: str  # a Hugging Face model folder (local or gs://)
    output_dir: str
    model_name: str
    model_hash: str  # from start-up; every worker checks the model it loads against it
    encoder_info: str  # JSON of transforms.embed.EncoderInfo (start-up load, CPU)
    input_format: str  # arrayrecord | parquet
    input_ranges: tuple = ()  # ((shard path relative to input, first record, end record), ...)
    input_summary: str = ""  # JSON: the input's pipeline, counts and config_hash
    pooling: str = "pooled"
    batch_size: int = 8
    dtype: str = "float32"
    device: str = ""  # "" = the GPU when there is one, else the CPU
    formats: tuple = ("arrayrecord", "parquet")
    num_shards: int = 0
    shard_plan: tuple = ()  # ((split, shards), ...)
    overwrite: bool = False
    max_error_fraction: float = 0.1  # run_options.CommitOptions
    max_errors: int = -1
    break_lock: bool = False
    staging_dir: str = ""
    progress_file: str = ""
    expected_inputs: int = 0  # images in the input (its summary.json)
    commit_in_pipeline: bool = False

    @property
    def write_dir(self) -> str:
        return self.staging_dir or self.output_dir

    def public(self) -> dict:
        """The configuration as written to summary.json."""
        d = asdict(self)
        for key in ("staging_dir", "progress_file", "input_ranges", "encoder_info", "input_summary"):
            d.pop(key)
        for key in ("input", "model", "output_dir"):
            d[key] = strip_credentials(d[key])
        d["formats"] = list(self.formats)
        d["shard_plan"] = dict(self.shard_plan)
        return d

    @functools.cached_property
    def config_hash(self) -> str:
        """SHA-256 over what changes row content: the model, how it runs, how images are batched, the input."""
        d = {k: getattr(self, k) for k in ("model_name", "model_hash", "pooling", "batch_size", "dtype", "device")}
        d["input_config_hash"] = json.loads(self.input_summary or "{}").get("config_hash", "")
        d["pipeline_version"] = PIPELINE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()


class ImageItem(NamedTuple):
    """One image of a record, with the record fields its row carries."""

    example_id: str
    image_index: int
    split: str
    modality: str
    task: str
    patient_key: str
    label: str
    source: str
    image_info: str
    record_config_hash: str
    data: bytes


class EmbedResult(NamedTuple):
    """RunInference's output per image: the item (without its bytes) and its vectors, or an error line."""

    item: ImageItem
    pooled: Any = None  # float32 (D,) or None
    tokens: Any = None  # float32 (rows, cols, D) or None
    error: dict | None = None


class RecordSchemaError(ValueError):
    """A record that is not a medprep record (another schema, or missing what an embedding needs)."""


def image_ref(example_id: str, image_index: int) -> str:
    """How error lines name an image: its record's example_id and its index in `images`."""
    return f"{example_id}/{image_index}"


def record_items(record: dict) -> list[ImageItem]:
    """The images of one decoded record as ImageItems; RecordSchemaError when it does not fit."""
    example_id = record.get("example_id")
    if not isinstance(example_id, str) or not example_id:
        raise RecordSchemaError("record has no example_id")
    try:
        int(example_id[:16], 16)
    except ValueError:
        raise RecordSchemaError(f"example_id {example_id!r} is not a medprep id (hex)") from None
    images = record.get("images") or []
    if not images or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise RecordSchemaError("record has no encoded images")
    infos = record.get("image_info") or []
    if infos and len(infos) != len(images):
        raise RecordSchemaError(f"{len(images)} images but {len(infos)} image_info entries")
    if not isinstance(record.get("split"), str) or not record.get("split"):
        raise RecordSchemaError("record has no split")
    sources = record.get("source") or []
    items = []
    for i, data in enumerate(images):
        info = infos[i] if infos else ""
        try:
            parsed = json.loads(info) if info else {}
        except ValueError:
            raise RecordSchemaError(f"image_info {i} is not JSON") from None
        source = parsed.get("source") if isinstance(parsed, dict) else None
        if not isinstance(source, str):
            source = sources[i] if i < len(sources) else ""
        items.append(
            ImageItem(
                example_id,
                i,
                record["split"],
                str(record.get("modality") or ""),
                str(record.get("task") or ""),
                str(record.get("patient_key") or ""),
                str(record.get("label") or ""),
                source,
                info,
                str(record.get("config_hash") or ""),
                bytes(data),
            )
        )
    return items


def _parquet_range(fh, start: int, stop: int):
    import pyarrow.parquet as pq

    from medprep.schemas.arrow import row_to_record

    pf = pq.ParquetFile(fh)
    if pf.metadata.num_rows < stop:
        raise ValueError(f"the shard holds {pf.metadata.num_rows} records, its summary entry more")
    first = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if first + n > start and first < stop:
            rows = pf.read_row_group(group).to_pylist()
            for offset, row in enumerate(rows):
                if start <= first + offset < stop:
                    yield first + offset, _decoded(row_to_record, row)
        first += n


def _decoded(decode, data):
    """decode(data), or the exception as a RecordSchemaError (one bad record is one error, not its range's)."""
    try:
        return decode(data)
    except Exception as exc:
        return RecordSchemaError(f"not a medprep record ({type(exc).__name__}: {exc})")


def read_range(path: str, fmt: str, start: int, stop: int) -> list[tuple[int, dict | RecordSchemaError]]:
    """(record index, record dict) for records [start, stop) of one input shard (local or gs://); a record
    that does not decode comes as a RecordSchemaError in place of its dict."""
    from apache_beam.io.filesystems import FileSystems

    if fmt == "parquet":
        if "://" not in path:
            return list(_parquet_range(path, start, stop))
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            return list(_parquet_range(fh, start, stop))
    from array_record.python.array_record_module import ArrayRecordReader

    from medprep.pipelines.io.sources.files import localize_file
    from medprep.schemas.example_codec import decode_example

    local = localize_file(path)  # the C++ reader needs a local file (gs:// inputs: prefer parquet)
    try:
        reader = ArrayRecordReader(local.path, "readahead_buffer_size:0")
        try:
            count = reader.num_records()
            if stop > count:
                raise ValueError(f"the shard holds {count} records, its summary entry more")
            data = reader.read(list(range(start, stop))) if stop > start else []
        finally:
            reader.close()
    finally:
        local.cleanup()
    return [(start + i, _decoded(decode_example, d)) for i, d in enumerate(data)]


class ReadBatches(beam.DoFn):
    """(shard, start, stop) -> lists of --batch_size ImageItems, in record order; a record that does not fit
    the schema gives one error line per image it holds, an unreadable range one error line."""

    def __init__(self, config: EmbedConfig):
        self.config = config
        self.metrics = PipelineMetrics()

    def _error(self, ref: str, stage: str, exc: BaseException):
        self.metrics.inc(f"errors_{stage}")
        if self.config.progress_file:
            mark_done(self.config.progress_file, False)
        yield beam.pvalue.TaggedOutput(ERRORS, error_line(ref, -1, stage, exc))
        yield beam.pvalue.TaggedOutput(STATS, {"inputs": 1})

    def process(self, element):
        rel, start, stop = element
        try:
            records = read_range(join(self.config.input, rel), self.config.input_format, start, stop)
        except Exception as exc:  # the whole range: one error line
            yield from self._error(f"{rel}[{start}:{stop}]", "read", exc)
            return
        batch: list[ImageItem] = []
        for index, record in records:
            try:
                if isinstance(record, RecordSchemaError):
                    raise record
                items = record_items(record)
            except RecordSchemaError as exc:
                record = record if isinstance(record, dict) else {}
                example_id = record.get("example_id") if isinstance(record.get("example_id"), str) else ""
                for i in range(max(1, len(record.get("images") or []))):
                    ref = image_ref(example_id, i) if example_id else f"{rel}#{index}"
                    yield from self._error(ref, "read", RecordSchemaError(f"{rel} record {index}: {exc}"))
                continue
            for item in items:
                batch.append(item)
                if len(batch) == self.config.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch


class EncoderModelHandler(ModelHandler):
    """RunInference handler: loads the encoder once per worker process (RunInference keeps it in a
    Shared handle) and embeds one pre-formed batch of ImageItems per call."""

    def __init__(self, config: EmbedConfig):
        super().__init__()
        self.config = config
        self.metrics = PipelineMetrics()

    def load_model(self):
        from medprep.pipelines.io.model_folder import local_model_folder
        from medprep.transforms.embed import load_encoder

        encoder = load_encoder(local_model_folder(self.config.model), self.config.dtype, self.config.device or None)
        if encoder.info.model_hash != self.config.model_hash:
            raise RuntimeError(
                f"{strip_credentials(self.config.model)} changed after start-up: model hash "
                f"{encoder.info.model_hash[:12]}, expected {self.config.model_hash[:12]}"
            )
        _LOG.info("loaded %r", encoder)
        return encoder

    def run_inference(self, batch, model, inference_args=None):
        import time

        import numpy as np

        from medprep.transforms.embed import decode_image

        results, kept, pixels = [], [], []
        start = time.perf_counter()
        for item in batch:
            bare = item._replace(data=b"")
            ref = image_ref(item.example_id, item.image_index)
            try:
                image = decode_image(item.data)
            except Exception as exc:
                results.append(EmbedResult(bare, error=error_line(ref, -1, "decode", exc)))
                continue
            try:
                pixels.append(model.pixel_values(image))
            except Exception as exc:
                results.append(EmbedResult(bare, error=error_line(ref, -1, "transform", exc)))
                continue
            kept.append(bare)
        self.metrics.observe("preprocess_ms", round((time.perf_counter() - start) * 1000))  # decode + processor
        if kept:
            start = time.perf_counter()
            pooled, tokens = model.forward(np.stack(pixels), self.config.pooling)
            self.metrics.observe("forward_ms", round((time.perf_counter() - start) * 1000))
            self.metrics.observe("batch_images", len(kept))
            for j, item in enumerate(kept):
                results.append(
                    EmbedResult(item, None if pooled is None else pooled[j], None if tokens is None else tokens[j])
                )
        return results

    def get_num_bytes(self, batch) -> int:
        return sum(len(item.data) for item in batch)

    def get_metrics_namespace(self) -> str:
        return "medprep_embed"


def _coords(info: dict) -> tuple[list, float, float]:
    """Slide patches: level-0 [x, y], the patch's level-0 side and its mpp; else ([], 0, 0)."""
    if info.get("format") == "slide" and "x" in info and "y" in info:
        return [int(info["x"]), int(info["y"])], float(info.get("size0", 0.0)), float(info.get("mpp", 0.0))
    return [], 0.0, 0.0


class ToRows(beam.DoFn):
    """EmbedResult -> row dict (schemas.embedding_fields) and stats, or its error line."""

    def __init__(self, config: EmbedConfig):
        self.config = config
        self.metrics = PipelineMetrics()
        self._constants: dict | None = None
        self._progress: WorkerProgress | None = None

    def _finished(self, ok: bool) -> None:
        self.metrics.inc("inputs")
        self.metrics.inc("inputs_failed", not ok)
        if self._progress is None:
            self._progress = WorkerProgress("embed")
        self._progress.add(ok)
        if self.config.progress_file:
            mark_done(self.config.progress_file, ok)

    def constants(self) -> dict:
        if self._constants is None:
            info = json.loads(self.config.encoder_info)
            self._constants = {
                "model": self.config.model_name,
                "model_hash": self.config.model_hash,
                "dtype": self.config.dtype,
                "image_size": list(info["image_size"]),
                "normalization": json.dumps(info["normalization"], sort_keys=True),
                "pipeline_version": PIPELINE_VERSION,
            }
        return self._constants

    def process(self, result: EmbedResult):
        item = result.item
        if result.error is not None:
            self.metrics.inc(f"errors_{result.error['stage']}")
            self._finished(False)
            yield beam.pvalue.TaggedOutput(ERRORS, result.error)
            yield beam.pvalue.TaggedOutput(STATS, {"inputs": 1})
            return
        info = json.loads(item.image_info) if item.image_info else {}
        coords, size0, mpp = _coords(info if isinstance(info, dict) else {})
        tokens = result.tokens
        row = {
            "example_id": item.example_id,
            "image_index": item.image_index,
            "split": item.split,
            "modality": item.modality,
            "task": item.task,
            "patient_key": item.patient_key,
            "label": item.label,
            "source": item.source,
            "image_info": item.image_info,
            "coords": coords,
            "patch_size0": size0,
            "mpp": mpp,
            "embedding": [] if result.pooled is None else result.pooled,
            "tokens": [] if tokens is None else tokens,
            "token_shape": [] if tokens is None else [int(s) for s in tokens.shape],
            "record_config_hash": item.record_config_hash,
            **self.constants(),
        }
        self.metrics.inc("embeddings")
        self._finished(True)
        yield row
        yield beam.pvalue.TaggedOutput(
            STATS,
            {
                "inputs": 1,
                "embeddings": 1,
                f"by_split/{item.split}": 1,
                f"by_task/{item.task}": 1,
                f"by_modality/{item.modality}": 1,
            },
        )


def _versions() -> dict:
    from importlib import metadata

    out = versions()
    for name in _EMBED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_summary(config: EmbedConfig, stats: dict, errors: dict, files: list[dict]) -> dict:
    """summary.json of an embed run: reconciled when images in == embeddings + error lines.

    errors: the error lines' counts, summed (records.summary.error_counts): never the lines themselves."""
    grouped: dict = {"by_split": {}, "by_task": {}, "by_modality": {}}
    for key, value in stats.items():
        group, _, name = key.partition("/")
        if name and group in grouped:
            grouped[group][name] = value
    by_stage = {key[6:]: n for key, n in errors.items() if key.startswith("stage/")}
    by_class = {key[6:]: n for key, n in errors.items() if key.startswith("class/")}
    n_errors = errors.get("errors", 0)
    inputs, embeddings = stats.get("inputs", 0), stats.get("embeddings", 0)
    info = json.loads(config.encoder_info)
    info.pop("device", None)  # where the start-up check ran; workers pick their own
    return {
        "pipeline": PIPELINE,
        "inputs": inputs,
        "inputs_with_examples": embeddings,
        "embeddings": embeddings,
        "errors": n_errors,
        "errors_by_stage": dict(sorted(by_stage.items())),
        "errors_by_class": dict(sorted(by_class.items())),
        "reconciled": inputs == embeddings + n_errors,
        **{k: dict(sorted(v.items())) for k, v in grouped.items()},
        "input": {
            "path": strip_credentials(config.input),
            "format": config.input_format,
            **json.loads(config.input_summary or "{}"),
        },
        "model": {"name": config.model_name, "path": strip_credentials(config.model), **info},
        "pooling": config.pooling,
        "files": sorted(files, key=lambda f: f["path"]),
        "config": config.public(),
        "config_hash": config.config_hash,
        "versions": _versions(),
    }


def _write_summary(counts: dict, config: EmbedConfig, files, error_files):
    # Every shard is written (files is complete): the staged parts go before summary.json exists.
    remove_parts(join(config.write_dir, PARTS_FOLDER))
    stats, errors = split_counts(counts)
    summary = build_summary(config, stats, errors, files + error_files)
    write_bytes(join(config.write_dir, "summary.json"), summary_json(summary))
    return summary


def _commit_when_written(summary, config: EmbedConfig, *written) -> None:
    """Commit once summary.json and every shard and error file (the side inputs in `written`, which
    this step waits for) are in the staging folder."""
    commit_step(summary, config)


def build(p: beam.Pipeline, config: EmbedConfig):
    """The embed graph on pipeline `p` (the runner is the caller's)."""
    read = (
        p
        | "InputRanges" >> beam.Create(list(config.input_ranges))
        | "SpreadRanges" >> beam.Reshuffle()
        | "ReadBatches" >> beam.ParDo(ReadBatches(config)).with_outputs(ERRORS, STATS, main="batches")
    )
    results = read.batches | "Embed" >> RunInference(EncoderModelHandler(config).with_no_batching())
    rows = results | "Rows" >> beam.ParDo(ToRows(config)).with_outputs(ERRORS, STATS, main="rows")
    errors = (read[ERRORS], rows[ERRORS]) | "AllErrors" >> beam.Flatten()
    stats = (read[STATS], rows[STATS]) | "AllStats" >> beam.Flatten()
    plan = p | "ShardPlan" >> beam.Create([dict(config.shard_plan)])
    files = (rows.rows, plan) | "Shards" >> WriteEmbeddingShards(config.write_dir, config.formats)
    # ERROR_LINES_PER_SHARD is read when the graph is built (a test shrinks it to get several error shards)
    counts = (stats, errors) | "Counts" >> RunCounts()
    lines = counts | "ErrorLines" >> beam.Map(error_lines)
    error_files = errors | "Errors" >> WriteErrors(config.write_dir, ERROR_LINES_PER_SHARD, line_count=lines)
    summary = counts | "Summary" >> beam.Map(
        _write_summary, config, beam.pvalue.AsList(files), beam.pvalue.AsList(error_files)
    )
    if config.commit_in_pipeline:  # a submitted job commits itself, once every output is written
        waits = [beam.pvalue.AsList(pc) for pc in (files, error_files)]
        summary | "Commit" >> beam.Map(_commit_when_written, config, *waits)
    return summary
