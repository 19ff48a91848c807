"""summary.json: counts (inputs, examples, images, errors by stage), reconciliation, config, versions."""

from __future__ import annotations

import json
import platform
from importlib import metadata

from medprep.pipelines.config import PIPELINE_VERSION, Config
from medprep.pipelines.records.identifiers import IDENTIFIER_HIT

_PACKAGES = (
    "apache-beam",
    "pydicom",
    "numpy",
    "pillow",
    "pyarrow",
    "sentencepiece",
    "array-record",
    "pylibjpeg-openjpeg",
    "python-gdcm",
    "SimpleITK",
    "openslide-python",
)


def sum_counts(dicts) -> dict:
    """Sum flat {key: int} dicts (a CombineFn-compatible callable)."""
    total: dict = {}
    for d in dicts:
        for key, value in d.items():
            total[key] = total.get(key, 0) + value
    return total


def error_counts(line: dict) -> dict:
    """One error line as counts (summed with sum_counts): the total, its stage, its error class, and
    whether it is an input refused because a record would carry its own identifier (records/identifiers.py)."""
    hit = line["stage"] == "privacy" and str(line["message"]).startswith(IDENTIFIER_HIT)
    return {"errors": 1, f"stage/{line['stage']}": 1, f"class/{line['error']}": 1, "identifier_hits": int(hit)}


def versions() -> dict:
    """Installed versions of the packages that shape the output."""
    out: dict[str, str | None] = {"medprep": PIPELINE_VERSION, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_summary(pipeline: str, config: Config, inputs: int, stats: dict, errors: dict, files: list[dict]) -> dict:
    """The summary dict; `reconciled` is true when inputs == inputs with examples + error lines.

    errors: the error lines' counts, summed (error_counts): never the lines themselves."""
    grouped: dict = {
        "by_split": {},
        "by_task": {},
        "by_modality": {},
        "truncated": {},
        "scrubbed": {},
        "patches": {},
        "series_skipped": {},
    }
    flat = {}
    for key, value in sorted(stats.items()):
        group, _, name = key.partition("/")
        if name and group in grouped:
            grouped[group][name] = value
        else:
            flat[key] = value
    by_stage = {key[6:]: n for key, n in errors.items() if key.startswith("stage/")}
    by_class = {key[6:]: n for key, n in errors.items() if key.startswith("class/")}
    n_errors = errors.get("errors", 0)
    inputs_ok = flat.get("inputs_ok", 0)
    return {
        "pipeline": pipeline,
        "inputs": inputs,
        "inputs_with_examples": inputs_ok,
        "examples": flat.get("examples", 0),
        "images": flat.get("images", 0),
        "errors": n_errors,
        "errors_by_stage": dict(sorted(by_stage.items())),
        "errors_by_class": dict(sorted(by_class.items())),
        "reconciled": inputs == inputs_ok + n_errors,
        "records_checked_for_identifiers": flat.get("identifier_checked", 0),
        "identifier_hits": errors.get("identifier_hits", 0),
        **{k: dict(sorted(v.items())) for k, v in grouped.items()},
        "files": sorted(files, key=lambda f: f["path"]),
        "extra_columns": list(config.extra_columns),  # manifest columns let through by --allow_extra_columns
        "config": config.public(),
        "config_hash": config.config_hash,
        "salt": "default (not secret: set --split_salt or MEDPREP_SALT)" if config.salt_is_default else "set",
        "versions": versions(),
    }


def summary_json(summary: dict) -> bytes:
    """Stable JSON bytes."""
    return (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")
