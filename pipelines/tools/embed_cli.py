"""`medprep embed --input OUT --model MODEL --output_dir EMB [options] [beam options]`.

Start-up refuses (exit 2, naming the option and the path) an --input that is not a finished
output of `medprep images|volumes|slides`, a --model folder that is missing or does not load
(config, image processor, weights — the whole encoder is loaded once and run on one blank image
in the requested dtype), and an --output_dir that already holds outputs (unless --overwrite) or is
the input itself. Then the graph of medprep.pipelines.graphs.embed runs on the given Beam runner and
its outputs are committed into --output_dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from medprep.pipelines.cli.options import OptionError, check_output_dir
from medprep.pipelines.graphs.embed import BATCHES_PER_RANGE, SOURCE_PIPELINES, EmbedConfig
from medprep.pipelines.io.embedding_sinks import FORMAT_NAMES, plan_embedding_shards, row_bytes_estimate
from medprep.pipelines.io.outputs import join, new_staging_dir
from medprep.transforms.embed import DTYPES, POOLINGS
from medprep.transforms.errors import strip_credentials

_LOG = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "arrayrecord", "parquet")


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def _formats(text: str) -> tuple:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in FORMAT_NAMES for n in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FORMAT_NAMES)} (comma-separated), got {text!r}")
    return names


def add_embed_options(parser: argparse.ArgumentParser) -> None:
    """The options of `medprep embed` (DESIGN.md 'Embeddings')."""
    g = parser.add_argument_group("medprep embed options")
    g.add_argument(
        "--input", required=True, help="a finished output folder of medprep images|volumes|slides (local or gs://)"
    )
    g.add_argument(
        "--model",
        required=True,
        help="a Hugging Face model folder (local or gs://): SigLIP / MedSigLIP, or a Gemma 3 / MedGemma "
        "checkpoint (its vision tower + multimodal projector); config.json, "
        "preprocessor_config.json and *.safetensors",
    )
    g.add_argument("--output_dir", required=True, help="output folder for the embeddings, local or gs://")
    g.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="pooled",
        help="pooled: one vector per image (default); tokens: the per-image token grid (Gemma 3: the "
        "256 visual tokens the language model consumes); both",
    )
    g.add_argument(
        "--batch_size",
        type=_int_in(1, 4096),
        default=8,
        help="images per forward pass (default 8); part of the configuration: the same batch size "
        "gives byte-identical outputs",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the encoder runs in (default float32); outputs are stored as float32",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (default): each worker uses its GPU when it has one, else the CPU",
    )
    g.add_argument(
        "--input_format",
        choices=INPUT_FORMATS,
        default="auto",
        help="which shards of --input to read (auto: ArrayRecord for local inputs, Parquet for gs://, "
        "whichever the input has)",
    )
    g.add_argument(
        "--formats",
        type=_formats,
        default=("arrayrecord", "parquet"),
        help="output formats: arrayrecord,parquet (default both)",
    )
    g.add_argument(
        "--num_shards", type=_int_in(0, 100000), default=0, help="shards per split (0 = automatic, ~128 MiB each)"
    )
    g.add_argument("--model_name", default="", help="the `model` field of every row (default: the model folder's name)")
    g.add_argument("--overwrite", action="store_true", help="replace outputs already in --output_dir")
    from medprep.pipelines.cli.options import add_option_group
    from medprep.pipelines.run_options import CommitOptions

    add_option_group(parser, CommitOptions, set())


def _read_input_summary(path: str) -> dict:
    from apache_beam.io.filesystems import FileSystems

    import medprep.pipelines.io.sources.files  # noqa: F401  (GCS emulator hook)

    where = join(path, "summary.json")
    try:
        exists = FileSystems.exists(where)
    except Exception as exc:
        raise OptionError("--input", f"cannot read {path}: {exc}") from None
    if not exists:
        raise OptionError(
            "--input",
            f"{path} is not a finished medprep output (no summary.json; run medprep "
            "images, volumes or slides first, or point at their --output_dir)",
        )
    try:
        with FileSystems.open(where, compression_type="uncompressed") as fh:
            summary = json.loads(fh.read())
    except Exception as exc:
        raise OptionError("--input", f"{where} is not readable JSON: {exc}") from None
    if not isinstance(summary, dict) or summary.get("pipeline") not in SOURCE_PIPELINES:
        what = summary.get("pipeline") if isinstance(summary, dict) else None
        raise OptionError(
            "--input",
            f"{path} is not an output of medprep {'/'.join(SOURCE_PIPELINES)} "
            f"(its summary.json names pipeline {what!r})",
        )
    return summary


def _input_shards(path: str, summary: dict, requested: str) -> tuple[str, list[dict]]:
    from apache_beam.io.filesystems import FileSystems

    by_format: dict[str, list[dict]] = {}
    for f in summary.get("files") or []:
        if isinstance(f, dict) and f.get("format") in FORMAT_NAMES:
            by_format.setdefault(f["format"], []).append(f)
    if requested == "auto":
        order = ("parquet", "arrayrecord") if "://" in path else ("arrayrecord", "parquet")
        fmt = next((f for f in order if f in by_format), None)
    else:
        fmt = requested
    if fmt not in by_format:
        raise OptionError(
            "--input_format" if requested != "auto" else "--input",
            f"{path} lists no {fmt or 'ArrayRecord or Parquet'} shards in its summary.json",
        )
    shards = sorted(by_format[fmt], key=lambda f: f["path"])
    for f in shards:
        if not FileSystems.exists(join(path, f["path"])):
            raise OptionError("--input", f"{path}: shard {f['path']} listed in summary.json is missing")
    return fmt, shards


def _ranges(shards: list[dict], images_per_record: float, batch_size: int) -> tuple:
    """(shard, start, stop) record ranges of about BATCHES_PER_RANGE batches of images each."""
    per_range = max(1, math.ceil(BATCHES_PER_RANGE * batch_size / max(images_per_record, 1.0)))
    return tuple(
        (f["path"], start, min(start + per_range, int(f["records"])))
        for f in shards
        for start in range(0, int(f["records"]), per_range)
    )


def _load_model(path: str, dtype: str):
    """Load the encoder on the CPU (the launcher may have no GPU) and run it on one blank image, in --dtype
    (float16 in float32: CPUs lack some half-precision kernels that GPUs have); OptionError('--model')."""
    import numpy as np

    from medprep.pipelines.io.model_folder import local_model_folder
    from medprep.transforms.embed import ModelFolderError, load_encoder

    try:
        folder = local_model_folder(path)
    except Exception as exc:
        raise OptionError("--model", f"cannot read {strip_credentials(path)}: {exc}") from None
    if "://" not in path and not os.path.isdir(path):
        raise OptionError("--model", f"{path}: model folder not found")
    try:
        encoder = load_encoder(folder, "float32" if dtype == "float16" else dtype, "cpu")
        blank = np.full((*encoder.info.image_size, 3), 128, np.uint8)
        encoder.forward(encoder.pixel_values(blank)[None], "pooled")
    except ModelFolderError as exc:
        message = str(exc).replace(folder, strip_credentials(path)) if folder != path else str(exc)
        raise OptionError("--model", message) from None
    except Exception as exc:
        raise OptionError(
            "--model", f"{strip_credentials(path)}: the encoder does not run ({type(exc).__name__}: {exc})"
        ) from None
    return encoder.info


def _check_output_dir(output_dir: str, input_dir: str, overwrite: bool) -> None:
    def norm(p: str) -> str:
        return p.rstrip("/") if "://" in p else os.path.abspath(p)

    if norm(output_dir) == norm(input_dir):
        raise OptionError("--output_dir", f"{output_dir} is the input folder; choose another folder")
    check_output_dir(output_dir, overwrite)


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    """Check the options against the world (input output, model folder, output folder); build the config."""
    summary = _read_input_summary(args.input)
    fmt, shards = _input_shards(args.input, summary, args.input_format)
    _check_output_dir(args.output_dir, args.input, args.overwrite)
    info = _load_model(args.model, args.dtype)
    examples, images = int(summary.get("examples") or 0), int(summary.get("images") or 0)
    per_record = images / examples if examples else 1.0
    expected_rows: dict[str, int] = {}
    for f in shards:
        expected_rows[f["split"]] = expected_rows.get(f["split"], 0) + math.ceil(int(f["records"]) * per_record)
    rows, cols, dim = info.token_grid
    per_row = row_bytes_estimate(
        info.embedding_dim if args.pooling != "tokens" else 0, rows * cols * dim if args.pooling != "pooled" else 0
    )
    plan = plan_embedding_shards(expected_rows, args.num_shards, per_row)
    input_summary = {
        "pipeline": summary["pipeline"],
        "config_hash": summary.get("config_hash", ""),
        "examples": examples,
        "images": images,
    }
    name = args.model_name or os.path.basename(args.model.rstrip("/")) or "model"
    return EmbedConfig(
        input=args.input,
        model=args.model,
        output_dir=args.output_dir,
        model_name=name,
        model_hash=info.model_hash,
        encoder_info=json.dumps({**info.as_dict(), "dtype": args.dtype}, sort_keys=True),
        input_format=fmt,
        input_ranges=_ranges(shards, per_record, args.batch_size),
        input_summary=json.dumps(input_summary),
        pooling=args.pooling,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device="" if args.device == "auto" else args.device,
        formats=args.formats,
        num_shards=args.num_shards,
        shard_plan=tuple(sorted(plan.items())),
        overwrite=args.overwrite,
        max_error_fraction=args.max_error_fraction,
        max_errors=args.max_errors,
        break_lock=args.break_lock,
        staging_dir=new_staging_dir(args.output_dir),
        expected_inputs=images,
    )


def run_embed(config: EmbedConfig, beam_args: list[str]) -> dict:
    """Run the graph with the Beam options, commit into --output_dir; returns summary.json's content."""
    from medprep.pipelines.cli.options import claim
    from medprep.pipelines.cli.runner import run
    from medprep.pipelines.graphs.embed import build
    from medprep.pipelines.io.run_output import commit_run, read_summary

    with claim(config, "embed") as lock:
        try:
            run(build, config, beam_args)
        except BaseException:
            _LOG.error(
                "the run failed; %s keeps its previous outputs (partial files are in %s)",
                strip_credentials(config.output_dir),
                strip_credentials(config.staging_dir),
            )
            raise
        commit_run(config.staging_dir, config.output_dir, config.max_error_fraction, config.max_errors, lock)
    return read_summary(config.output_dir)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(medprep embed options, Beam options); unknown options are refused (OptionError)."""
    from medprep.pipelines.cli.runner import check_beam_args

    parser = argparse.ArgumentParser(
        prog="medprep embed",
        description="Image embeddings / visual tokens of a finished medprep output. "
        "Unrecognized --options are Beam pipeline options.",
    )
    add_embed_options(parser)
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(beam_args)
    return args, beam_args


def main(argv: list[str] | None = None) -> int:
    """`medprep embed …`: 0 when the run reconciles, 1 when it does not, 2 for refused options."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from medprep.pipelines.io.run_output import ErrorBudgetExceeded, LockLost

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, beam_args = parse(argv)
        summary = run_embed(config_from_args(args), beam_args)
    except OptionError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ErrorBudgetExceeded, LockLost) as exc:
        print(str(exc) if isinstance(exc, ErrorBudgetExceeded) else f"medprep: error: {exc}", file=sys.stderr)
        return 3
    except SystemExit as exc:  # argparse: --help (0) or a bad value (2)
        return exc.code if isinstance(exc.code, int) else 2
    print(json.dumps({k: summary[k] for k in ("inputs", "embeddings", "errors", "reconciled")}))
    return 0 if summary["reconciled"] else 1


if __name__ == "__main__":
    sys.exit(main())
