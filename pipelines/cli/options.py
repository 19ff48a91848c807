"""Command-line options shared by the pipelines, validated before any work starts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from typing import cast

from medprep.pipelines.config import OPTION_GROUPS, Config
from medprep.pipelines.io.manifest import ManifestError, inspect_manifest
from medprep.pipelines.io.outputs import existing_outputs, join, new_staging_dir, write_bytes
from medprep.pipelines.io.sources.files import exists
from medprep.pipelines.records.privacy import DEFAULT_SALT
from medprep.transforms.errors import ItemError, strip_credentials
from medprep.transforms.option_fields import option_fields

_LOG = logging.getLogger(__name__)


class OptionError(SystemExit):
    """A bad option: exits with status 2 and a message naming the option."""

    def __init__(self, option: str, message: str):
        super().__init__(2)
        self.option, self.message = option, message

    def __str__(self) -> str:
        return f"medprep: error: {self.option}: {self.message}"


def _argparse_type(parse):
    """An option_fields parser as an argparse type (ValueError -> argparse's error naming the option)."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_option_group(parser: argparse.ArgumentParser, group: type, seen: set[str]) -> None:
    """Every option an option dataclass declares, as `--name` arguments (each once per parser)."""
    g = parser.add_argument_group((group.__doc__ or group.__name__).strip().splitlines()[0].rstrip("."))
    for o in option_fields(group):
        if o.cli in seen:
            continue
        seen.add(o.cli)
        kwargs: dict = {"dest": o.name, "default": o.default, "help": o.help}
        if o.flag:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = o.cli.upper()
            if o.parse is not None:
                kwargs["type"] = _argparse_type(o.parse)
            if o.choices:
                kwargs["choices"] = o.choices
        g.add_argument(f"--{o.cli}", **kwargs)


def add_pipeline_options(parser: argparse.ArgumentParser, groups: tuple) -> None:
    """A pipeline subcommand's options: the groups its registry entry names, in order."""
    seen: set[str] = set()
    for group in groups:
        add_option_group(parser, group, seen)


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse a folder that holds outputs (unless overwrite) or that cannot be written (local)."""
    present = existing_outputs(path)
    if present and not overwrite:
        from medprep.pipelines.io.commit import read_journal

        interrupted = (
            f"; a commit into it was interrupted: `medprep recover {path}` finishes it"
            if read_journal(path) is not None
            else ""
        )
        raise OptionError(
            "--output_dir",
            f"{path} already holds medprep outputs ({', '.join(present)}); "
            f"pass --overwrite to replace them or choose another folder{interrupted}",
        )
    if "://" not in path:
        try:
            os.makedirs(path, exist_ok=True)
            probe = join(path, ".medprep-write-test")
            write_bytes(probe, b"")
            os.remove(probe)
        except OSError as exc:
            raise OptionError("--output_dir", f"cannot write to {path}: {exc.strerror or exc}") from None


def claim(config, command: str, job: bool = False):
    """Take --output_dir for this run (medprep.pipelines.io.run_output.claim_output); refusals are OptionErrors."""
    from medprep.pipelines.io.run_output import LockHeld, claim_output

    try:
        return claim_output(
            config.output_dir, config.overwrite, config.break_lock, config.staging_dir, command, job=job
        )
    except LockHeld as exc:
        raise OptionError("--output_dir", str(exc)) from None
    except FileExistsError as exc:
        raise OptionError("--output_dir", str(exc)) from None


def _check_servers(option: str, bases: list[str], what: str = "") -> None:
    """Refuse, in one line, a DICOMweb service that does not answer (or refuses the credentials) at start-up."""
    from concurrent.futures import ThreadPoolExecutor

    from medprep.pipelines.io.sources.dicomweb import client_for

    def probe(base: str) -> str:
        try:
            return client_for(base).probe()
        except Exception as exc:  # the session itself (e.g. Google credentials that cannot be found)
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max(1, min(8, len(bases)))) as pool:
        answers = list(pool.map(probe, bases))
    for base, unreachable in zip(bases, answers, strict=True):
        if unreachable:
            raise OptionError(option, f"{what}{strip_credentials(base)}: {unreachable}")


def _check_tokenizer(path: str, text_ids_only: bool, system_prompt: str) -> tuple[str, str]:
    """Load --tokenizer once at start-up: (content hash, description JSON). A tokenizer that cannot build the
    chat sequence is refused unless --text_ids_only; the chat template is tried on a sample conversation."""
    from medprep.pipelines.io.tokenizer import load_tokenizer
    from medprep.transforms.chat import conversation, images_then_prompt
    from medprep.transforms.text import Tokenizer

    if not path:
        return "", ""
    try:
        tokenizer = cast(Tokenizer, load_tokenizer(path))  # None only without a path
    except ItemError as exc:
        raise OptionError("--tokenizer", exc.message) from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise OptionError("--tokenizer", f"{path}: {exc}") from None
    missing = tokenizer.missing_for_chat()
    if missing and not text_ids_only:
        raise OptionError(
            "--tokenizer",
            f"{path} cannot build the chat sequence (input_ids, loss_mask): its "
            f"vocabulary has no {', '.join(missing)}; pass --text_ids_only to write "
            "prompt_ids/text_ids only",
        )
    if not missing:
        try:
            tokenizer.chat(conversation(images_then_prompt(1, "prompt"), "response", system_prompt))
        except ValueError as exc:
            raise OptionError("--tokenizer", f"{path}: {exc}") from None
    info = tokenizer.describe()
    return info["sha256"], json.dumps(info, sort_keys=True)


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate the parsed options against the world (files, manifest) and build the Config."""
    for group in OPTION_GROUPS:  # options of groups this subcommand does not take: their defaults
        for o in option_fields(group):
            if not hasattr(args, o.name):
                setattr(args, o.name, o.default)
    if not args.output_dir:
        raise OptionError("--output_dir", "required: the output folder, local or gs://")
    if args.val_fraction + args.test_fraction >= 1.0:
        raise OptionError("--val_fraction/--test_fraction", "together they must leave some patients for train (< 1)")
    from medprep.pipelines.io.discovery import check_reports, is_folder_input, parse_query

    expected_inputs = 0
    extra_columns: tuple[str, ...] = ()
    input_ref, reports = args.input, args.reports
    if bool(args.input) == bool(args.dicomweb_url):
        raise OptionError(
            "--input/--dicomweb_url", "give exactly one: a manifest or folder (--input), or a DICOMweb service"
        )
    discovery = bool(args.dicomweb_url) or is_folder_input(args.input)
    if discovery and getattr(args, "command", "") == "slides":
        raise OptionError(
            "--dicomweb_url" if args.dicomweb_url else "--input",
            "slides take a manifest (.jsonl, .csv, .parquet); discovery without a manifest "
            "(a folder --input or --dicomweb_url) is for images and volumes",
        )
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
        servers: set[str] = set()
        try:
            expected_inputs, extra_columns = inspect_manifest(args.input, args.allow_extra_columns, servers)
        except ManifestError as exc:
            raise OptionError("--input", str(exc)) from None
        _check_servers("--input", sorted(servers), "the manifest's DICOMweb service ")
    try:
        parse_query(args.query)
    except ValueError as exc:
        raise OptionError("--query", str(exc)) from None
    if args.query and not args.dicomweb_url:
        raise OptionError(
            "--query", "QIDO filters apply to --dicomweb_url discovery only (give --dicomweb_url, or drop --query)"
        )
    if discovery and not args.reports:
        raise OptionError(
            "--reports",
            "discovery (a folder --input or --dicomweb_url) takes each example's text from "
            "a reports file: give --reports (CSV/JSONL/Parquet with study_uid and/or "
            "accession_number, text); without it every input would fail",
        )
    if args.reports and not discovery:
        raise OptionError(
            "--reports",
            "report texts are joined to discovered data only; with a manifest, put each "
            "row's text in its 'text' column (or drop --reports)",
        )
    if args.reports:
        try:
            check_reports(args.reports)
        except Exception as exc:
            raise OptionError("--reports", f"cannot read {args.reports}: {exc}") from None
        if "://" not in args.reports:
            reports = os.path.abspath(args.reports)
    if args.dicomweb_url:  # reachable, last of the discovery checks (the others need no network)
        _check_servers("--dicomweb_url", [args.dicomweb_url.rstrip("/")])
    tokenizer_sha, tokenizer_info = _check_tokenizer(args.tokenizer, args.text_ids_only, args.system_prompt)
    salt = args.split_salt or os.environ.get("MEDPREP_SALT", "")
    if not salt:
        _LOG.warning("no --split_salt or MEDPREP_SALT: using the public default salt; keys are NOT secret")
    check_output_dir(args.output_dir, args.overwrite)
    values = {k: v for k, v in vars(args).items() if k in _CONFIG_KEYS}
    if values.get("patch_size") and not values.get("stride"):
        values["stride"] = values["patch_size"]  # --stride defaults to --patch_size
    return Config(
        **{
            **values,
            "input": input_ref,
            "reports": reports,
            "dicomweb_url": args.dicomweb_url.rstrip("/"),
            "tokenizer_sha256": tokenizer_sha,
            "tokenizer_info": tokenizer_info,
            "salt": salt or DEFAULT_SALT,
            "salt_is_default": not salt,
            "staging_dir": new_staging_dir(args.output_dir),
            "extra_columns": extra_columns,
            "expected_inputs": expected_inputs,
        }
    )


_CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(Config))
