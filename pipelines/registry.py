"""The pipelines `medprep` runs, as a table: a new pipeline is a graph module plus one line here.

Each entry names the module whose `build(p, config)` makes the Beam graph and the option groups its
subcommand takes (declared once in their dataclasses; the CLI, the run config and summary.json derive
from them). Tools over finished outputs (verify, inspect, …) are a table too.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions
from medprep.transforms.volume import VolumeOptions
from medprep.transforms.windowing import CtWindowOptions


@dataclass(frozen=True)
class PipelineSpec:
    """A `medprep NAME` pipeline: its help line, graph module and option groups."""

    name: str
    help: str
    module: str  # defines build(p: beam.Pipeline, config: Config)
    groups: tuple[type, ...]  # option dataclasses on its command line, in --help order
    # Local worker processes (--direct_running_mode=multi_processing) pay from this many inputs each:
    # below it their start-up outweighs the work (benchmarks/README.md), and the run goes in-process.
    # 0: the graph decides how it uses them (volumes: fan_out_pays).
    inputs_per_worker: int = 0


@dataclass(frozen=True)
class ToolSpec:
    """A `medprep NAME` command over finished outputs: its help line and module (defines main(argv) -> int)."""

    name: str
    help: str
    module: str


COMMON = (InputOptions, OutputOptions, CommitOptions, TextOptions, PrivacyOptions, ImageOptions, RenderOptions)

PIPELINES: dict[str, PipelineSpec] = {}
TOOLS: dict[str, ToolSpec] = {}


def register(spec: PipelineSpec | ToolSpec) -> None:
    """Add a pipeline or a tool (a name is taken once)."""
    table: dict = PIPELINES if isinstance(spec, PipelineSpec) else TOOLS
    if spec.name in PIPELINES or spec.name in TOOLS:
        raise ValueError(f"medprep {spec.name} is registered already")
    table[spec.name] = spec


register(
    PipelineSpec(
        "images",
        "2D images (CXR, fundus, skin, other) from a manifest",
        "medprep.pipelines.graphs.images",
        COMMON + (DiscoveryOptions, CtWindowOptions),
        inputs_per_worker=500,  # in-process, images already run in threads: 2 workers only match it at 1,000
    )
)
register(
    PipelineSpec(
        "volumes",
        "CT and MR series (DICOM folders/prefixes, instance lists, NIfTI)",
        "medprep.pipelines.graphs.volumes",
        COMMON + (DiscoveryOptions, CtWindowOptions, VolumeOptions, VolumeRecordOptions),
    )
)
register(
    PipelineSpec(
        "slides",
        "whole-slide images (SVS, NDPI, MRXS, tiled TIFF, DICOM WSI…) from a manifest",
        "medprep.pipelines.graphs.slides",
        COMMON + (SlideOptions, SlideRecordOptions),
        inputs_per_worker=4,  # 4 slides on 2 workers took 38 s, in-process 24 s
    )
)
register(
    ToolSpec(
        "verify",
        "check an output folder (counts, shards, records, splits, identifiers)",
        "medprep.pipelines.tools.verify",
    )
)
register(
    ToolSpec(
        "inspect", "write OUT/report.html: counts, sample grids, histograms, errors", "medprep.pipelines.tools.inspect"
    )
)
register(
    ToolSpec(
        "embed",
        "image embeddings / visual tokens of a finished output (RunInference; medprep[embed])",
        "medprep.pipelines.tools.embed_cli",
    )
)
register(
    ToolSpec(
        "recover",
        "finish or roll back a commit a killed run left half-done; remove dead runs' staging folders",
        "medprep.pipelines.tools.recover",
    )
)
