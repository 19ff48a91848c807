"""The fan-out graph slides and volumes share, so one big input spreads over workers:

    rows -> Spread -> Plan (per input: batches of work units) -> Reshuffle -> Work (per unit)
         -> GroupByKey (per input) -> Assemble (records; where the input is counted done) -> WriteDataset

A unit that fails is reported to Assemble, and the other units of the input go on.

Work writes each batch's encoded images to a part file in the run's staging folder where they are
rendered (medprep.pipelines.io.fanout_parts), so only references and the small per-unit metadata
cross the GroupByKey; Assemble builds an input's records with those references and reads each
record's images back just before handing it on: no shuffle and no worker holds more than one
record's images.

The fan-out still costs two more shuffles (of batches and references), a write and a read of every
encoded image, and an extra stage; it pays only where an input's units can run on processes the inputs
do not already keep busy: fewer inputs than processes (local workers; on Dataflow workers × vCPUs), or
a count unknown off the local runner (`fan_out_pays`). Elsewhere a pipeline prepares each input in one
step (`one_step_pipeline`), with the same per-unit code, so the records are byte-identical either way.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.metrics import PipelineMetrics
from medprep.pipelines.io.fanout_parts import fan_out_dir, part_name, read_back, stage_units
from medprep.transforms.errors import ItemError, timed_stages

BATCH = 8  # units per work element: enough to amortize per-element cost, small enough to spread
# Locally, an input fans out only with this many units (~6 s of slices): below it the fan-out's two
# extra stages cost more than a second worker saves (one 85-slice series on 2 workers: 24.8 s fanned
# out against 12.0 s in-process, benchmarks/README.md).
LOCAL_FAN_OUT_UNITS = 32 * BATCH


def input_key(row: dict) -> str:
    """The key one input's work units are grouped by (manifest row number and first reference)."""
    return f"{row['row']}:{row['images'][0]}"


def batches(items: list, size: int = BATCH) -> list[list]:
    """Consecutive runs of at most `size` items."""
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class UnitFailure:
    """Why one work unit failed: what its input's error line says if no unit of the input survives."""

    stage: str
    message: str

    def error(self) -> ItemError:
        """The failure as the ItemError an error line is made from."""
        return ItemError(self.stage, self.message)


def failure_of(exc: BaseException, default_stage: str = "decode") -> UnitFailure:
    """A unit's failure: an ItemError's stage and message, else `default_stage` and the exception."""
    if isinstance(exc, ItemError):
        return UnitFailure(exc.stage, exc.message)
    return UnitFailure(default_stage, f"{type(exc).__name__}: {exc}")


def attempt_unit(fn: Callable[[], Any]) -> tuple[Any, UnitFailure | None]:
    """Run one work unit: (result, None), or (None, its failure) when it raised."""
    from medprep.pipelines.graphs.dead_letter import ItemTimeout

    try:
        return fn(), None
    except ItemTimeout:  # the whole input overran --item_timeout: stop, not one unit's failure
        raise
    except Exception as exc:  # one bad unit: the others go on
        return None, failure_of(exc)


class WorkDoFn(beam.DoFn):
    """Base of a fan-out's Work step: `run_unit` times one unit into metrics (`<unit>s_done`,
    `<unit>s_failed`, `<unit>_<stage>_ms`) and turns its failure into a UnitFailure; `staged`
    writes a work item's encoded images to its part in `parts_dir` and hands (input key, unit result)
    on to the GroupByKey, observing its pickled size (`<unit>_grouped_bytes`: references and metadata,
    never image bytes)."""

    unit = "unit"

    def __init__(self, config: Config):
        self.config = config
        self.parts_dir = fan_out_dir(config.write_dir)
        self.metrics = PipelineMetrics()

    def run_unit(self, fn) -> tuple[Any, UnitFailure | None]:
        """(result, None) or (None, the failure)."""
        with timed_stages() as times:
            result, failure = attempt_unit(fn)
        self.metrics.inc(f"{self.unit}s_failed" if failure else f"{self.unit}s_done")
        if failure is None:
            self.metrics.stage_times({f"{self.unit}_{name}": sec for name, sec in times.items()})
        return result, failure

    def staged(self, key: str, work_id: str, results: Iterable[Any]) -> Iterator[tuple[str, Any]]:
        """One work item's unit results (dataclasses with `finished` and `staged`) -> (key, result) for the
        GroupByKey: every rendered image's bytes written to the work item's fan-out part, the result carrying
        its reference in `staged` and an empty `finished.encoded`; each measured as the GroupByKey carries it."""
        split = (
            (replace(r, finished=replace(r.finished, encoded=b"")), r.finished.encoded)
            if r.finished is not None
            else (r, None)
            for r in results
        )
        for result, ref in stage_units(self.parts_dir, part_name(key, work_id), split):
            result = replace(result, staged=ref)
            self.metrics.observe(f"{self.unit}_grouped_bytes", len(pickle.dumps((key, result))))
            yield key, result


class ReadsStagedImages:
    """Mixin for a fan-out's Assemble DoFn (before its ItemDoFn base): the records it yields carry
    fanout_parts.StagedImage references in `images`; each is read back just before it is handed on,
    one record at a time (the records themselves are built, checked and buffered as references),
    whether ItemDoFn emits it from process or, windowed, from finish_bundle."""

    config: Config

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        return read_back(super().process(element, timestamp, window), fan_out_dir(self.config.write_dir))

    def finish_bundle(self):
        return read_back(super().finish_bundle() or (), fan_out_dir(self.config.write_dir))


def local_workers(options) -> int | None:
    """Worker processes (or threads) of a local run: 1 in-process, --direct_num_workers (0: one per CPU)
    with --direct_running_mode multi_processing/multi_threading; None for any other runner."""
    import os

    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    if options.view_as(StandardOptions).runner not in (None, "DirectRunner", "direct"):
        return None
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        return direct.direct_num_workers or os.cpu_count() or 1
    return 1


def machine_vcpus(machine_type: str) -> int | None:
    """vCPUs of a Compute Engine machine type: n2-highcpu-8 -> 8, n2-custom-8-16384 -> 8; None if not told."""
    parts = (machine_type or "").rsplit("/", 1)[-1].split("-")
    count = parts[-2] if "custom" in parts and len(parts) >= 3 else parts[-1]
    return int(count) if count.isdigit() else None


def worker_processes(options) -> int | None:
    """Processes a run can keep busy at once, when the options say: locally `local_workers`; on Dataflow
    (one SDK process per vCPU) --max_num_workers (else --num_workers) × the --machine_type's vCPUs.
    None when not known (another runner, or Dataflow without a worker count or machine type)."""
    from apache_beam.options.pipeline_options import StandardOptions, WorkerOptions

    local = local_workers(options)
    if local is not None:
        return local
    if options.view_as(StandardOptions).runner not in ("DataflowRunner", "dataflow"):
        return None
    workers = options.view_as(WorkerOptions)
    count, vcpus = workers.max_num_workers or workers.num_workers, machine_vcpus(workers.machine_type)
    return count * vcpus if count and vcpus else None


def fan_out_pays(options, expected_inputs: int, units_per_input: int) -> bool:
    """Whether spreading one input's units over workers can shorten the run (see the module docstring).

    An input with at most one batch of units cannot spread. Otherwise it fans out when the known inputs
    are fewer than the processes that could work on them (more inputs already keep every process busy, and
    the fan-out would only add two shuffles, a stage, a write and a read of every encoded image), and, off
    the local runner, whenever either number is unknown (a discovered cohort, a runner whose workers the
    options do not give).
    Locally it also needs LOCAL_FAN_OUT_UNITS units (a long series: `--slice_selection all`).
    """
    if units_per_input <= BATCH:
        return False
    processes = worker_processes(options)
    local = local_workers(options) is not None
    if not local and (processes is None or expected_inputs == 0):
        return True
    if local and units_per_input < LOCAL_FAN_OUT_UNITS:
        return False
    return processes is not None and processes > 1 and 0 < expected_inputs < processes


def fan_out_pipeline(
    p: beam.Pipeline,
    name: str,
    config: Config,
    plan: beam.DoFn,
    work: beam.DoFn,
    assemble: beam.DoFn,
    work_label: str,
    per_series: bool = False,
    images_per_input: int = 1,
    discover: bool = True,
):
    """Build the fan-out graph (see the module docstring); returns WriteDataset's output."""
    from medprep.pipelines.graphs.dataset_writer import WriteDataset, input_rows
    from medprep.pipelines.graphs.dead_letter import ERRORS, STATS

    rows = input_rows(p, config, per_series, discover)
    planned = (
        rows | "Spread" >> beam.Reshuffle() | "Plan" >> beam.ParDo(plan).with_outputs(ERRORS, STATS, main="batches")
    )
    assembled = (
        planned.batches
        | "SpreadBatches" >> beam.Reshuffle()
        | work_label >> beam.ParDo(work)
        | "ByInput" >> beam.GroupByKey()
        | "Materialize" >> beam.MapTuple(lambda key, results: (key, list(results)))
        | "Assemble" >> beam.ParDo(assemble).with_outputs(ERRORS, STATS, main="records")
    )
    errors = (planned[ERRORS], assembled[ERRORS]) | "AllErrors" >> beam.Flatten()
    return (rows, assembled.records, assembled[STATS], errors) | "Write" >> WriteDataset(name, config, images_per_input)


def one_step_pipeline(
    p: beam.Pipeline,
    name: str,
    config: Config,
    prepare: beam.DoFn,
    per_series: bool = False,
    images_per_input: int = 1,
    discover: bool = True,
):
    """The graph without the fan-out: rows -> Spread -> Prepare (plan, every unit, records) -> WriteDataset."""
    from medprep.pipelines.graphs.dataset_writer import WriteDataset, input_rows
    from medprep.pipelines.graphs.dead_letter import ERRORS, STATS

    rows = input_rows(p, config, per_series, discover)
    out = (
        rows
        | "Spread" >> beam.Reshuffle()
        | "Prepare" >> beam.ParDo(prepare).with_outputs(ERRORS, STATS, main="records")
    )
    return (rows, out.records, out[STATS], out[ERRORS]) | "Write" >> WriteDataset(name, config, images_per_input)
