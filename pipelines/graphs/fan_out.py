"""The fan-out graph slides and volumes share, so one big input spreads over workers:

    rows -> Spread -> Plan (per input: batches of work units) -> Reshuffle -> Work (per unit)
         -> GroupByKey (per input) -> Assemble (records; where the input is counted done) -> WriteDataset

A unit that fails is reported to Assemble, and the other units of the input go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.metrics import PipelineMetrics
from medprep.transforms.errors import ItemError, timed_stages

BATCH = 8  # units per work element: enough to amortize per-element cost, small enough to spread


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


class WorkDoFn(beam.DoFn):
    """Base of a fan-out's Work step: `run_unit` times one unit into metrics (`<unit>s_done`,
    `<unit>s_failed`, `<unit>_<stage>_ms`) and turns its failure into a UnitFailure."""

    unit = "unit"

    def __init__(self, config: Config):
        self.config = config
        self.metrics = PipelineMetrics()

    def run_unit(self, fn) -> tuple[Any, UnitFailure | None]:
        """(result, None) or (None, the failure)."""
        try:
            with timed_stages() as times:
                result = fn()
        except Exception as exc:  # one bad unit: the others go on
            self.metrics.inc(f"{self.unit}s_failed")
            return None, failure_of(exc)
        self.metrics.inc(f"{self.unit}s_done")
        self.metrics.stage_times({f"{self.unit}_{name}": sec for name, sec in times.items()})
        return result, None


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
