"""summary.json: counts (inputs, examples, images, errors by stage), reconciliation, config, versions."""

from __future__ import annotations

import json
import platform
from importlib import metadata

from medprep.pipelines.config import PIPELINE_VERSION, Config

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


def versions() -> dict:
    """Installed versions of the packages that shape the output."""
    out: dict[str, str | None] = {"medprep": PIPELINE_VERSION, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_summary(
    pipeline: str, config: Config, inputs: int, stats: dict, errors: list[dict], files: list[dict]
) -> dict:
    """The summary dict; `reconciled` is true when inputs == inputs with examples + error lines."""
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
    by_stage: dict = {}
    by_class: dict = {}
    for line in errors:
        by_stage[line["stage"]] = by_stage.get(line["stage"], 0) + 1
        by_class[line["error"]] = by_class.get(line["error"], 0) + 1
    inputs_ok = flat.get("inputs_ok", 0)
    return {
        "pipeline": pipeline,
        "inputs": inputs,
        "inputs_with_examples": inputs_ok,
        "examples": flat.get("examples", 0),
        "images": flat.get("images", 0),
        "errors": len(errors),
        "errors_by_stage": dict(sorted(by_stage.items())),
        "errors_by_class": dict(sorted(by_class.items())),
        "reconciled": inputs == inputs_ok + len(errors),
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
