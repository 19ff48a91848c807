"""Command-line options shared by the pipelines, validated before any work starts."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re

from medprep.pipelines.config import Config
from medprep.pipelines.io.manifest import ManifestError, inspect_manifest
from medprep.pipelines.io.outputs import existing_outputs, join, new_staging_dir, write_bytes
from medprep.pipelines.records.privacy import DEFAULT_SALT
from medprep.pipelines.io.sinks import FORMAT_DIRS
from medprep.pipelines.io.sources.files import exists
from medprep.transforms.encode import DEFAULT_JPEG_QUALITY, DEFAULT_PNG_LEVEL, IMAGE_FORMATS
from medprep.transforms.image import DEFAULT_IMAGE_SIZE
from medprep.transforms.errors import ItemError
from medprep.transforms.volume import MR_NORMALIZATIONS, SELECTIONS
from medprep.transforms.windowing import CT_PRESETS, Window

_LOG = logging.getLogger(__name__)


class OptionError(SystemExit):
    """A bad option: exits with status 2 and a message naming the option."""

    def __init__(self, option: str, message: str):
        super().__init__(2)
        self.option, self.message = option, message

    def __str__(self) -> str:
        return f"medprep: error: {self.option}: {self.message}"


def _int_in(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high if high is not None else '∞'}], got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _formats(text: str) -> tuple:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in FORMAT_DIRS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FORMAT_DIRS)} (comma-separated), got {text!r}")
    return names


def _ct_windows(text: str) -> tuple:
    try:
        pairs = [tuple(float(v) for v in part.split(",")) for part in text.split(";")]
        if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
            raise ValueError
        for lo, hi in pairs:
            Window(lo, hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi;lo,hi;lo,hi' in HU with hi > lo, got {text!r}") from None
    return tuple(pairs)


def _percentiles(text: str) -> tuple:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'low,high' percentiles, got {text!r}") from None
    if not 0 <= low < high <= 100:
        raise argparse.ArgumentTypeError(f"need 0 <= low < high <= 100, got {text!r}")
    return low, high


def _granularity(text: str) -> tuple:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in ("series", "slice") for n in names):
        raise argparse.ArgumentTypeError(f"choose series, slice or series,slice; got {text!r}")
    return names


def _series_filter(text: str) -> str:
    from medprep.transforms.series_filter import parse_filter

    try:
        parse_filter(text)
    except (ValueError, re.error) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_volume_options(parser: argparse.ArgumentParser) -> None:
    """Options of `medprep volumes`."""
    g = parser.add_argument_group("volume options")
    g.add_argument("--max_slices", type=_int_in(1, 10000), default=85, help="slices per series example (default 85)")
    g.add_argument("--slice_selection", choices=SELECTIONS, default="uniform",
                   help="uniform (reference rule), report (slices named in the text, else uniform) or all")
    g.add_argument("--mr_normalization", choices=MR_NORMALIZATIONS, default="minmax",
                   help="MR intensity over the whole series: minmax (reference) or percentile")
    g.add_argument("--mr_percentiles", type=_percentiles, default=(0.5, 99.5), help="low,high for percentile (default 0.5,99.5)")
    g.add_argument("--min_slices", type=_int_in(1), default=2, help="fewer usable slices is an error (default 2)")
    g.add_argument("--granularity", type=_granularity, default=("series",),
                   help="series (one record per series), slice (one per selected slice) or series,slice")
    g.add_argument("--series_filter", type=_series_filter, default="",
                   help="keep series meeting all conditions, e.g. 'SeriesDescription~axial,SliceThickness<=2.5,"
                        "ImageType!~LOCALIZER' (attributes: SeriesDescription, ImageType, SliceThickness, Modality, SeriesNumber)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _slide_granularity(text: str) -> tuple:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in ("slide", "patch") for n in names):
        raise argparse.ArgumentTypeError(f"choose slide, patch or slide,patch; got {text!r}")
    return names


def add_slide_options(parser: argparse.ArgumentParser) -> None:
    """Options of `medprep slides` (defaults: the MedGemma 1.5 pathology reference)."""
    from medprep.transforms.slide import TISSUE_METHODS, SlideOptions

    d = SlideOptions()
    g = parser.add_argument_group("slide options")
    g.add_argument("--target_mpp", type=_positive_float, default=d.target_mpp,
                   help=f"patch resolution in µm/px (default {d.target_mpp:g}, ~10x)")
    g.add_argument("--patch_size", type=_int_in(16, 8192), default=d.patch_size,
                   help=f"patch side in pixels at --target_mpp (default {d.patch_size})")
    g.add_argument("--stride", type=_int_in(1, 8192), default=None,
                   help="grid step in pixels at --target_mpp (default: --patch_size, patches edge to edge)")
    g.add_argument("--tissue", choices=TISSUE_METHODS, default=d.tissue,
                   help="mean_grey (reference: mean grey in [1, 204] at ~1.25x) or otsu (saturation, pen marks removed)")
    g.add_argument("--min_tissue", type=_fraction, default=d.min_tissue,
                   help=f"otsu: minimum tissue fraction of a patch (default {d.min_tissue:g})")
    g.add_argument("--max_patches", type=_int_in(1), default=d.max_patches,
                   help=f"patches sampled per slide, seeded (default {d.max_patches})")
    g.add_argument("--patches_per_example", type=_int_in(1), default=d.max_patches,
                   help=f"patches in one slide-level record (default {d.max_patches})")
    g.add_argument("--seed", type=_int_in(0), default=d.seed, help=f"sampling seed (default {d.seed})")
    g.add_argument("--assume_mpp", type=_positive_float, default=0.0,
                   help="resolution to use for slides that declare none (otherwise they are errors)")
    g.add_argument("--granularity", type=_slide_granularity, default=("slide",),
                   help="slide (up to --patches_per_example patches per record), patch (one per record), or slide,patch")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every pipeline takes (DESIGN.md 'CLI')."""
    g = parser.add_argument_group("medprep options")
    g.add_argument("--input", default="", help="manifest (.jsonl, .csv, .parquet), or a folder / gs:// prefix "
                                                "(ending in /) to discover DICOM files in; local or gs://")
    g.add_argument("--dicomweb_url", default="", help="discover on this DICOMweb service instead of --input "
                                                      "(…/dicomWeb or …/dicom-web)")
    g.add_argument("--query", default="", help="QIDO filters for discovery, e.g. 'Modality=CT&StudyDate=20200101-20201231'")
    g.add_argument("--reports", default="", help="report texts for discovered data (required with discovery): "
                                                 "CSV/JSONL/Parquet with study_uid and/or accession_number, text, "
                                                 "optional prompt")
    g.add_argument("--output_dir", required=True, help="output folder, local or gs://")
    g.add_argument("--tokenizer", default="",
                   help="SentencePiece .model, tokenizer.json or a Hugging Face tokenizer folder (local or gs://); "
                        "must have the chat tokens (Gemma 3's) for input_ids/loss_mask unless --text_ids_only")
    g.add_argument("--text_ids_only", action="store_true",
                   help="accept a tokenizer without the chat tokens: prompt_ids/text_ids only, no input_ids")
    g.add_argument("--system_prompt", default="",
                   help="system message for every example, e.g. 'You are an expert radiologist.' (Gemma 3's template "
                        "puts it at the start of the user turn)")
    g.add_argument("--keep_source", action="store_true",
                   help="write image references relative to the manifest in `source` (default: salted hashes; "
                        "paths often hold names and MRNs)")
    g.add_argument("--image_size", type=_int_in(16, 8192), default=DEFAULT_IMAGE_SIZE,
                   help=f"output side in pixels (default {DEFAULT_IMAGE_SIZE})")
    g.add_argument("--image_format", choices=IMAGE_FORMATS, default="png", help="png (lossless, default) or jpeg")
    g.add_argument("--png_level", type=_int_in(0, 9), default=DEFAULT_PNG_LEVEL,
                   help=f"PNG zlib level 0-9 (default {DEFAULT_PNG_LEVEL}: fastest lossless; see benchmarks/README.md)")
    g.add_argument("--jpeg_quality", type=_int_in(1, 100), default=DEFAULT_JPEG_QUALITY,
                   help=f"JPEG quality 1-100 (default {DEFAULT_JPEG_QUALITY})")
    g.add_argument("--ct_preset", choices=sorted(CT_PRESETS), default="medgemma-1.5", help="CT windows preset (default medgemma-1.5)")
    g.add_argument("--ct_windows", type=_ct_windows, default=(), help="custom CT windows 'lo,hi;lo,hi;lo,hi' in HU (R;G;B), overrides --ct_preset")
    g.add_argument("--max_pixels", type=_int_in(1), default=200_000_000, help="refuse images with more pixels than this (default 2e8)")
    g.add_argument("--formats", type=_formats, default=("arrayrecord", "parquet"), help="output formats: arrayrecord,parquet (default both)")
    g.add_argument("--num_shards", type=_int_in(0), default=0, help="shards per split (0 = automatic, ~128 MiB each, estimated from the input count)")
    g.add_argument("--val_fraction", type=_fraction, default=0.0, help="fraction of patients in val (default 0)")
    g.add_argument("--test_fraction", type=_fraction, default=0.0, help="fraction of patients in test (default 0)")
    g.add_argument("--split_salt", default=None, help="secret for patient/study keys and splits (default: $MEDPREP_SALT)")
    g.add_argument("--max_text_tokens", type=_int_in(1), default=1024, help="truncate prompt and text to this many tokens (default 1024)")
    g.add_argument("--overwrite", action="store_true", help="replace outputs already in --output_dir")
    g.add_argument("--preview_count", type=_int_in(0, 256), default=16, help="examples in preview.png (default 16)")
    g.add_argument("--scrub_text", action="store_true",
                   help="replace obvious identifiers in prompt/text (header names and ids, dates, MRN-like numbers)")
    g.add_argument("--allow_burned_in", action="store_true",
                   help="keep DICOMs that declare BurnedInAnnotation=YES (skipped by default: identifiers may be in the pixels)")
    g.add_argument("--item_timeout", type=_int_in(1), default=600, help="seconds one input may take (default 600)")
    g.add_argument("--allow_extra_columns", action="store_true",
                   help="keep manifest columns medprep does not know (refused by default, naming the closest "
                        "known column); they are listed in summary.json")


def _check_output_dir(path: str, overwrite: bool) -> None:
    present = existing_outputs(path)
    if present and not overwrite:
        raise OptionError("--output_dir", f"{path} already holds medprep outputs ({', '.join(present)}); "
                                          "pass --overwrite to replace them or choose another folder")
    if "://" not in path:
        try:
            os.makedirs(path, exist_ok=True)
            probe = join(path, ".medprep-write-test")
            write_bytes(probe, b"")
            os.remove(probe)
        except OSError as exc:
            raise OptionError("--output_dir", f"cannot write to {path}: {exc.strerror or exc}") from None


def _check_tokenizer(path: str, text_ids_only: bool, system_prompt: str) -> tuple[str, str]:
    """Load --tokenizer once at start-up: (content hash, description JSON). A tokenizer that cannot build the
    chat sequence is refused unless --text_ids_only; the chat template is tried on a sample conversation."""
    from medprep.pipelines.io.tokenizer import load_tokenizer
    from medprep.transforms.chat import conversation, images_then_prompt

    if not path:
        return "", ""
    try:
        tokenizer = load_tokenizer(path)
    except ItemError as exc:
        raise OptionError("--tokenizer", exc.message) from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise OptionError("--tokenizer", f"{path}: {exc}") from None
    missing = tokenizer.missing_for_chat()
    if missing and not text_ids_only:
        raise OptionError("--tokenizer", f"{path} cannot build the chat sequence (input_ids, loss_mask): its "
                                         f"vocabulary has no {', '.join(missing)}; pass --text_ids_only to write "
                                         "prompt_ids/text_ids only")
    if not missing:
        try:
            tokenizer.chat(conversation(images_then_prompt(1, "prompt"), "response", system_prompt))
        except ValueError as exc:
            raise OptionError("--tokenizer", f"{path}: {exc}") from None
    info = tokenizer.describe()
    return info["sha256"], json.dumps(info, sort_keys=True)


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate the parsed options against the world (files, manifest) and build the Config."""
    if args.val_fraction + args.test_fraction >= 1.0:
        raise OptionError("--val_fraction/--test_fraction", "together they must leave some patients for train (< 1)")
    from medprep.pipelines.io.discovery import is_folder_input, parse_query, read_reports

    expected_inputs, extra_columns = 0, ()
    input_ref, reports = args.input, args.reports
    if bool(args.input) == bool(args.dicomweb_url):
        raise OptionError("--input/--dicomweb_url", "give exactly one: a manifest or folder (--input), or a DICOMweb service")
    discovery = bool(args.dicomweb_url) or is_folder_input(args.input)
    if discovery and getattr(args, "command", "") == "slides":
        raise OptionError("--dicomweb_url" if args.dicomweb_url else "--input",
                          "slides take a manifest (.jsonl, .csv, .parquet); discovery without a manifest "
                          "(a folder --input or --dicomweb_url) is for images and volumes")
    if args.dicomweb_url:
        if not args.dicomweb_url.startswith(("http://", "https://")):
            raise OptionError("--dicomweb_url", f"expected an http(s):// URL, got {args.dicomweb_url!r}")
    elif discovery:
        if not exists(args.input.rstrip("/")) and "://" not in args.input:
            raise OptionError("--input", f"folder not found: {args.input}")
        if "://" not in args.input:
            # Resolved once, here: workers list it and use the listed (absolute) paths as they are.
            input_ref = os.path.abspath(args.input) + "/"
    elif not exists(args.input):
        raise OptionError("--input", f"manifest not found: {args.input}")
    else:
        try:
            expected_inputs, extra_columns = inspect_manifest(args.input, args.allow_extra_columns)
        except ManifestError as exc:
            raise OptionError("--input", str(exc)) from None
    try:
        parse_query(args.query)
    except ValueError as exc:
        raise OptionError("--query", str(exc)) from None
    if args.query and not args.dicomweb_url:
        raise OptionError("--query", "QIDO filters apply to --dicomweb_url discovery only (give --dicomweb_url, or drop --query)")
    if discovery and not args.reports:
        raise OptionError("--reports", "discovery (a folder --input or --dicomweb_url) takes each example's text from "
                                       "a reports file: give --reports (CSV/JSONL/Parquet with study_uid and/or "
                                       "accession_number, text); without it every input would fail")
    if args.reports and not discovery:
        raise OptionError("--reports", "report texts are joined to discovered data only; with a manifest, put each "
                                       "row's text in its 'text' column (or drop --reports)")
    if args.reports:
        try:
            read_reports(args.reports)
        except Exception as exc:
            raise OptionError("--reports", f"cannot read {args.reports}: {exc}") from None
        if "://" not in args.reports:
            reports = os.path.abspath(args.reports)
    tokenizer_sha, tokenizer_info = _check_tokenizer(args.tokenizer, args.text_ids_only, args.system_prompt)
    salt = args.split_salt or os.environ.get("MEDPREP_SALT", "")
    if not salt:
        _LOG.warning("no --split_salt or MEDPREP_SALT: using the public default salt; keys are NOT secret")
    _check_output_dir(args.output_dir, args.overwrite)
    slide_keys = {k: getattr(args, k) for k in _VOLUME_KEYS if hasattr(args, k)}
    if "stride" in slide_keys and slide_keys["stride"] is None:
        slide_keys["stride"] = slide_keys["patch_size"]  # --stride defaults to --patch_size
    return Config(
        input=input_ref, output_dir=args.output_dir, tokenizer=args.tokenizer, tokenizer_sha256=tokenizer_sha,
        tokenizer_info=tokenizer_info, text_ids_only=args.text_ids_only, system_prompt=args.system_prompt,
        keep_source=args.keep_source,
        image_size=args.image_size, image_format=args.image_format, png_level=args.png_level,
        jpeg_quality=args.jpeg_quality, ct_preset=args.ct_preset, ct_windows=args.ct_windows,
        max_pixels=args.max_pixels, formats=args.formats, num_shards=args.num_shards,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, max_text_tokens=args.max_text_tokens,
        overwrite=args.overwrite, preview_count=args.preview_count, salt=salt or DEFAULT_SALT,
        salt_is_default=not salt, staging_dir=new_staging_dir(args.output_dir), scrub_text=args.scrub_text,
        allow_burned_in=args.allow_burned_in, item_timeout=float(args.item_timeout),
        allow_extra_columns=args.allow_extra_columns, extra_columns=extra_columns,
        dicomweb_url=args.dicomweb_url.rstrip("/"), query=args.query, reports=reports,
        expected_inputs=expected_inputs, **slide_keys,
    )


_VOLUME_KEYS = ("max_slices", "slice_selection", "mr_normalization", "mr_percentiles", "min_slices",
                "granularity", "series_filter", "target_mpp", "patch_size", "stride", "tissue", "min_tissue",
                "max_patches", "patches_per_example", "seed", "assume_mpp")
