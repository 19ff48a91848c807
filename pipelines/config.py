"""The run configuration shared by every pipeline: what the workers need, picklable, hashable.

Config is derived from the option dataclasses (OPTION_GROUPS): one field per declared option, keyed by
the option's name, plus what start-up derives (salt, tokenizer description, staging folder…). The
transforms' own option objects are rebuilt from it (image_options(), volume_options(), slide_options()),
and summary.json's `config` is its public part, from which load_options() rebuilds them after the run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

from medprep.pipelines.run_options import (
    CommitOptions,
    DiscoveryOptions,
    InputOptions,
    OutputOptions,
    PrivacyOptions,
    SlideRecordOptions,
    TextOptions,
    VolumeRecordOptions,
)
from medprep.transforms.dicom_render import RenderOptions
from medprep.transforms.errors import strip_credentials
from medprep.transforms.image import ImageOptions
from medprep.transforms.option_fields import from_values, option_fields
from medprep.transforms.slide import SlideOptions
from medprep.transforms.volume import VolumeOptions
from medprep.transforms.windowing import CtWindowOptions, Window

PIPELINE_VERSION = "0.1.0"

# Every option of every pipeline, in --help order. A subcommand shows the groups its registry entry names.
OPTION_GROUPS: tuple[type, ...] = (
    InputOptions,
    DiscoveryOptions,
    OutputOptions,
    CommitOptions,
    TextOptions,
    PrivacyOptions,
    ImageOptions,
    RenderOptions,
    CtWindowOptions,
    VolumeOptions,
    VolumeRecordOptions,
    SlideOptions,
    SlideRecordOptions,
)
CLI_ONLY = frozenset({"split_salt"})  # read at start-up, never kept (the salt is kept apart, never serialized)
# Not part of the records' content: left out of config_hash.
_NOT_HASHED = (
    "input",
    "output_dir",
    "tokenizer",
    "overwrite",
    "preview_count",
    "formats",
    "num_shards",
    "item_timeout",
    "item_threads",
    "min_inputs_per_worker",
    "dicomweb_url",
    "query",
    "reports",
    "expected_inputs",
    "commit_in_pipeline",
    "max_error_fraction",
    "max_errors",
    "break_lock",
    "verbose",
)

_DERIVED: list[tuple[str, type, Any]] = [
    ("salt", str, dataclasses.field(default="", repr=False)),
    ("salt_is_default", bool, False),
    ("tokenizer_sha256", str, ""),  # content hash: the same model from any path gives the same records
    ("tokenizer_info", str, ""),  # JSON: kind, vocabulary size, special ids, chat template hash
    ("extra_columns", tuple, ()),  # manifest columns let through by --allow_extra_columns
    ("staging_dir", str, ""),  # where workers write; committed into output_dir when the run succeeds
    ("progress_file", str, ""),  # local runs: workers mark finished inputs here for the progress bar
    ("expected_inputs", int, 0),  # manifest rows, known at start-up (0: discovery, not known)
    ("commit_in_pipeline", bool, False),  # the job commits staging into output_dir itself (launchers that exit)
]


def _option_specs() -> list[tuple[str, type, Any]]:
    specs: dict[str, tuple[str, type, Any]] = {}
    for group in OPTION_GROUPS:
        for o in option_fields(group):
            if o.name not in CLI_ONLY and o.name not in specs:
                specs[o.name] = (o.name, Any, dataclasses.field(default=o.default))
    return list(specs.values())


class _ConfigMethods:
    """What a Config can do beyond holding values (the fields come from OPTION_GROUPS)."""

    @property
    def write_dir(self) -> str:
        """The folder the pipeline writes into (the staging folder, else output_dir)."""
        return self.staging_dir or self.output_dir  # type: ignore[attr-defined]

    def values(self) -> dict:
        """{option name: value} of every field."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def windows(self) -> tuple[Window, Window, Window]:
        """The three CT windows (R, G, B) in HU."""
        return from_values(CtWindowOptions, self.values()).windows()

    def image_options(self) -> ImageOptions:
        """Options for medprep.transforms.image."""
        render = from_values(RenderOptions, self.values(), ct_windows=self.windows())
        return from_values(ImageOptions, self.values(), render=render)

    def volume_options(self) -> VolumeOptions:
        """Options for medprep.transforms.volume."""
        values = dict(self.values(), mr_percentiles=tuple(self.mr_percentiles))  # type: ignore[attr-defined]
        return from_values(VolumeOptions, values, image=self.image_options())

    def slide_options(self, mpp_override: float | None = None) -> SlideOptions:
        """Options for medprep.transforms.slide (a manifest row's mpp overrides the slide's own resolution)."""
        return from_values(SlideOptions, self.values(), image=self.image_options(), override_mpp=mpp_override)

    def public(self) -> dict:
        """The configuration as written to summary.json (no salt, no credentials in URLs)."""
        d: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.values().items()}
        for key in ("salt", "staging_dir", "progress_file"):
            d.pop(key)
        d["tokenizer_info"] = json.loads(self.tokenizer_info) if self.tokenizer_info else None  # type: ignore
        for key in ("input", "output_dir", "tokenizer", "dicomweb_url", "reports"):
            d[key] = strip_credentials(d[key])
        d["ct_windows"] = [[w.low, w.high] for w in self.windows()]
        d["mr_percentiles"] = list(d["mr_percentiles"])
        return d

    @functools.cached_property
    def config_hash(self) -> str:
        """SHA-256 over the options that change record content (not input/output paths)."""
        d = self.public()
        for key in _NOT_HASHED:
            d.pop(key, None)
        d["pipeline_version"] = PIPELINE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()


if TYPE_CHECKING:

    class Config(_ConfigMethods):
        """How a type checker sees Config: a frozen dataclass whose fields are made from OPTION_GROUPS at
        import, each one Any."""

        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...
else:
    Config = dataclasses.make_dataclass("Config", _option_specs() + _DERIVED, bases=(_ConfigMethods,), frozen=True)
    Config.__module__ = __name__  # pickled by reference to this module (Beam workers)
    Config.__doc__ = (
        "Options of one run: every declared option by name, plus start-up facts. The salt is never serialized."
    )
