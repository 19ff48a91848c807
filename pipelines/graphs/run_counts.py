"""A run's counts in one combiner: the per-input stats summed and the error lines counted.

One CombineGlobally instead of one per kind (and one more to size the error files): each is a few
steps and stages of the graph, the fixed cost of every local run. `split_counts` parts the result.
"""

from __future__ import annotations

import apache_beam as beam

from medprep.pipelines.records.summary import error_counts, sum_counts

ERROR_KEY = "error:"  # prefix of the error lines' counts among the stats' keys


def _error_entry(line: dict) -> dict:
    return {ERROR_KEY + key: value for key, value in error_counts(line).items()}


def split_counts(counts: dict) -> tuple[dict, dict]:
    """The combined counts as (summed stats, summed error counts as records.summary.error_counts names them)."""
    stats = {k: v for k, v in counts.items() if not k.startswith(ERROR_KEY)}
    errors = {k[len(ERROR_KEY) :]: v for k, v in counts.items() if k.startswith(ERROR_KEY)}
    return stats, errors


def error_lines(counts: dict) -> int:
    """How many error lines the combined counts hold."""
    return counts.get(ERROR_KEY + "errors", 0)


class RunCounts(beam.PTransform):
    """(stats dicts, error lines) -> a one-element PCollection: every stat summed and the error lines'
    counts (never the lines), in one combiner."""

    def expand(self, pcolls):
        stats, errors = pcolls
        entries = errors | "ErrorCounts" >> beam.Map(_error_entry)
        return (stats, entries) | "Both" >> beam.Flatten() | "Sum" >> beam.CombineGlobally(sum_counts)
