"""The options of a run that are not per-item processing: inputs, outputs, text, splits, privacy, and the
volumes' and slides' record layout. Declared once here (transforms.option_fields.option); the processing
options are declared in the transforms' own option dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from medprep.pipelines.io.sinks import FORMATS
from medprep.pipelines.io.sources.files import DEFAULT_MAX_INPUT_BYTES
from medprep.transforms.option_fields import byte_size, fraction, int_in, names_from, option, share

DEFAULT_MAX_TEXT_BYTES = 1 << 20  # a report is kilobytes; a megabyte of text is not a report


def _series_filter(text: str) -> str:
    import re

    from medprep.transforms.series_filter import parse_filter

    try:
        parse_filter(text)
    except (ValueError, re.error) as exc:
        raise ValueError(str(exc)) from None
    return text


@dataclass(frozen=True)
class InputOptions:
    """Where the examples come from."""

    input: str = option(
        "",
        "manifest (.jsonl, .csv, .parquet), local or gs://; `images` and `volumes` also take a folder / gs:// "
        "prefix (ending in /) to discover DICOM files in",
    )
    allow_extra_columns: bool = option(
        False,
        "keep manifest columns medprep does not know (refused by default, "
        "naming the closest known column); they are listed in summary.json",
        flag=True,
    )
    item_timeout: int = option(600, "seconds one input may take (default 600)", int_in(1))
    item_threads: int = option(
        0,
        "inputs `images` and `volumes` (one step) prepare at once in one worker process, in threads (slides: "
        "one at a time); default 0: on the local runner the machine's cores shared among its worker "
        "processes, at most 4; 1 on other runners",
        int_in(0, 64),
    )
    min_inputs_per_worker: int = option(
        -1,
        "start local worker processes (--direct_running_mode=multi_processing) only when each gets at least "
        "this many manifest rows, else run in-process (default -1: the pipeline's own, images 500, slides 4, "
        "volumes 0 as its fan-out decides; 0: always start them)",
        int_in(-1),
    )
    max_input_bytes: int = option(
        DEFAULT_MAX_INPUT_BYTES,
        "refuse an input file larger than this before reading it (error line), e.g. 500M, 8G (default 4G); "
        "only regular files are read (FIFOs, devices and sockets are refused)",
        byte_size,
    )


@dataclass(frozen=True)
class DiscoveryOptions:
    """Examples without a manifest: DICOM found in a folder or on a DICOMweb service (images, volumes)."""

    dicomweb_url: str = option("", "discover on this DICOMweb service instead of --input (…/dicomWeb or …/dicom-web)")
    query: str = option("", "QIDO filters for discovery, e.g. 'Modality=CT&StudyDate=20200101-20201231'")
    reports: str = option(
        "",
        "report texts for discovered data (required with discovery): CSV/JSONL/Parquet with "
        "study_uid and/or accession_number, text, optional prompt",
    )


@dataclass(frozen=True)
class OutputOptions:
    """Where and how records are written."""

    output_dir: str = option("", "output folder, local or gs:// (required)")
    formats: tuple = option(
        ("arrayrecord", "parquet"),
        "output formats: arrayrecord,parquet (default both)",
        names_from(tuple(FORMATS), ", ".join(FORMATS) + " (comma-separated)"),
    )
    num_shards: int = option(
        0, "shards per split (0 = automatic, ~128 MiB each, estimated from the input count)", int_in(0)
    )
    overwrite: bool = option(False, "replace outputs already in --output_dir", flag=True)
    preview_count: int = option(16, "examples in preview.png (default 16)", int_in(0, 256))
    verbose: bool = option(
        False, "print the details of a failure (tracebacks, Beam's own messages) instead of one line", flag=True
    )


@dataclass(frozen=True)
class CommitOptions:
    """When a finished run may replace what --output_dir holds."""

    max_error_fraction: float = option(
        0.1,
        "commit nothing (exit 3, previous outputs kept) when more than this share of the inputs fail "
        "(default 0.1; 1 = never)",
        share,
    )
    max_errors: int = option(
        -1, "also commit nothing when more than this many inputs fail (default -1: no absolute limit)", int_in(-1)
    )
    break_lock: bool = option(
        False,
        "take over --output_dir's lock when the run holding it is gone (its process ended, no heartbeat "
        "for 5 minutes, or a submitted job that failed)",
        flag=True,
    )


@dataclass(frozen=True)
class TextOptions:
    """Tokenizer and chat sequence."""

    tokenizer: str = option(
        "",
        "SentencePiece .model, tokenizer.json or a Hugging Face tokenizer folder (local or "
        "gs://); must have the chat tokens (Gemma 3's) for input_ids/loss_mask unless "
        "--text_ids_only",
    )
    text_ids_only: bool = option(
        False, "accept a tokenizer without the chat tokens: prompt_ids/text_ids only, no input_ids", flag=True
    )
    system_prompt: str = option(
        "",
        "system message for every example, e.g. 'You are an expert radiologist.' "
        "(Gemma 3's template puts it at the start of the user turn)",
    )
    max_text_tokens: int = option(1024, "truncate prompt and text to this many tokens (default 1024)", int_in(1))
    max_text_bytes: int = option(
        DEFAULT_MAX_TEXT_BYTES,
        "an input whose text, prompt, label or box label is longer than this (UTF-8 bytes) becomes an "
        "error line (default 1M)",
        byte_size,
    )


@dataclass(frozen=True)
class PrivacyOptions:
    """Splits, keys and what may reach the records."""

    val_fraction: float = option(0.0, "fraction of patients in val (default 0)", fraction)
    test_fraction: float = option(0.0, "fraction of patients in test (default 0)", fraction)
    split_salt: str | None = option(None, "secret for patient/study keys and splits (default: $MEDPREP_SALT)")
    scrub_text: bool = option(
        False,
        "replace identifiers in prompt, text, label and box_labels (names, ids, dates, SSN, phone, e-mail, addresses)",
        flag=True,
    )
    allow_burned_in: bool = option(
        False,
        "keep DICOMs that declare BurnedInAnnotation=YES (skipped by default: identifiers may be in the pixels)",
        flag=True,
    )
    keep_source: bool = option(
        False,
        "write image references relative to the manifest in `source` (default: salted "
        "hashes; paths often hold names and MRNs)",
        flag=True,
    )


@dataclass(frozen=True)
class VolumeRecordOptions:
    """Which series become records, and at which granularity."""

    granularity: tuple = option(
        ("series",),
        "series (one record per series), slice (one per selected slice) or series,slice",
        names_from(("series", "slice"), "series, slice or series,slice"),
    )
    series_filter: str = option(
        "",
        "keep series meeting all conditions, e.g. 'SeriesDescription~axial,"
        "SliceThickness<=2.5,ImageType!~LOCALIZER' (attributes: SeriesDescription, "
        "ImageType, SliceThickness, Modality, SeriesNumber)",
        _series_filter,
    )


@dataclass(frozen=True)
class SlideRecordOptions:
    """Slide-level and/or patch-level records."""

    slide_granularity: tuple = option(
        ("slide",),
        "slide (up to --patches_per_example patches per record), patch (one per record), or slide,patch",
        names_from(("slide", "patch"), "slide, patch or slide,patch"),
        cli="granularity",
    )
    patches_per_example: int = option(125, "patches in one slide-level record (default 125)", int_in(1))
