"""The common tail of every pipeline: shards, errors, summary.json and preview.png."""

from __future__ import annotations

import apache_beam as beam

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.run_counts import RunCounts, error_lines, split_counts
from medprep.pipelines.io.outputs import join, write_bytes
from medprep.pipelines.io.run_output import commit_step
from medprep.pipelines.io.sinks import (
    PARTS_FOLDER,
    StageRecords,
    WriteErrors,
    WriteShards,
    image_bytes_estimate,
    plan_shards,
    remove_parts,
)
from medprep.pipelines.records.split import split_fractions
from medprep.pipelines.records.summary import build_summary, summary_json
from medprep.pipelines.tools.preview import caption_of, contact_sheet
from medprep.transforms.encode import file_extension


def _write_summary(counts, pipeline, config, inputs, files, error_files):
    # Every shard is written (files is complete): the staged parts go before summary.json exists.
    remove_parts(join(config.write_dir, PARTS_FOLDER))
    stats, errors = split_counts(counts)
    summary = build_summary(pipeline, config, inputs, stats, errors, files + error_files)
    write_bytes(join(config.write_dir, "summary.json"), summary_json(summary))
    return summary


def _write_preview(samples, output_dir):
    write_bytes(join(output_dir, "preview.png"), contact_sheet(sorted(samples)))
    return "preview.png"


def _commit_when_written(summary, config, *written):
    """Commit once summary.json and every other output (shards, error files, preview: the side
    inputs in `written`, which this step waits for) are in the staging folder."""
    commit_step(summary, config)


def input_rows(p: beam.Pipeline, config: Config, per_series: bool = False, discover: bool = True):
    """The inputs as manifest-row dicts: from the manifest, or discovered (DICOMweb search, folder listing)."""
    from medprep.pipelines.io.discovery import DiscoverRows, is_folder_input
    from medprep.pipelines.io.manifest import read_manifest

    if discover and (config.dicomweb_url or is_folder_input(config.input)):
        return p | "Discover" >> DiscoverRows(config, per_series)
    return p | "Manifest" >> beam.Create([config.input]) | "ReadRows" >> beam.FlatMap(read_manifest)


def manifest_pipeline(p: beam.Pipeline, name: str, config: Config, prepare: beam.DoFn, images_per_input: int = 1):
    """The one-step graph: rows (manifest or discovery) -> Reshuffle -> prepare -> WriteDataset."""
    from medprep.pipelines.graphs.dead_letter import ERRORS, STATS

    rows = input_rows(p, config)
    out = (
        rows
        | "Spread" >> beam.Reshuffle()
        | "Prepare" >> beam.ParDo(prepare).with_outputs(ERRORS, STATS, main="records")
    )
    # Inputs are counted before the Reshuffle, so the shard plan exists before records do.
    return (rows, out.records, out[STATS], out[ERRORS]) | "Write" >> WriteDataset(name, config, images_per_input)


class WriteDataset(beam.PTransform):
    """(inputs, records, stats, errors) -> every output file of DESIGN.md's 'Outputs'."""

    def __init__(self, pipeline_name: str, config: Config, images_per_input: int = 1):
        super().__init__()
        self.pipeline_name, self.config = pipeline_name, config
        self.images_per_input = images_per_input

    def expand(self, pcolls):
        inputs, records, stats, errors = pcolls
        cfg = self.config
        # Records are serialized where they are made and written to part files in the staging folder;
        # only their locations move on (no runner holds image bytes between stages, none are shuffled).
        staged = records | "Stage" >> beam.ParDo(StageRecords(join(cfg.write_dir, PARTS_FOLDER)))
        n_inputs = inputs | "CountInputs" >> beam.combiners.Count.Globally()
        per_input = self.images_per_input * image_bytes_estimate(cfg.image_size, cfg.image_format)
        fractions = split_fractions(cfg.val_fraction, cfg.test_fraction)
        plan = n_inputs | "PlanShards" >> beam.Map(plan_shards, cfg.num_shards, fractions, per_input)
        files = (staged, plan) | "Shards" >> WriteShards(cfg.write_dir, cfg.formats, file_extension(cfg.image_format))
        counts = (stats, errors) | "Counts" >> RunCounts()
        lines = counts | "ErrorLines" >> beam.Map(error_lines)
        error_files = errors | "Errors" >> WriteErrors(cfg.write_dir, line_count=lines)
        preview = (
            records
            | "PreviewSample" >> beam.Map(lambda r: (r["example_id"], r["images"][0], caption_of(r)))
            | "PreviewPick" >> beam.combiners.Top.Smallest(cfg.preview_count)
            | "PreviewWrite" >> beam.Map(_write_preview, cfg.write_dir)
        )
        summary = counts | "Summary" >> beam.Map(
            _write_summary,
            self.pipeline_name,
            cfg,
            beam.pvalue.AsSingleton(n_inputs),
            beam.pvalue.AsList(files),
            beam.pvalue.AsList(error_files),
        )
        if cfg.commit_in_pipeline:  # the launcher does not wait (flex templates): the job commits itself
            waits = [beam.pvalue.AsList(pc) for pc in (files, error_files, preview)]
            summary | "Commit" >> beam.Map(_commit_when_written, cfg, *waits)
        return summary
