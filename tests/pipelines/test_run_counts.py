"""One combiner for a run's stats and error counts: split back exactly, even where their names meet."""

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from medprep.pipelines.graphs.run_counts import RunCounts, error_lines, split_counts


def _line(stage: str, error: str) -> dict:
    return {"ref": "x", "row": 1, "stage": stage, "error": error, "message": "m"}


def test_stats_and_error_counts_come_back_apart():
    stats = [{"inputs_ok": 1, "images": 2}, {"inputs_ok": 1, "images": 3, "errors": 7}]  # a stat named like a count
    lines = [_line("decode", "ItemError"), _line("decode", "ValueError"), _line("read", "ItemError")]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        counts = (p | "S" >> beam.Create(stats), p | "E" >> beam.Create(lines)) | RunCounts()
        parted = counts | beam.Map(lambda c: (split_counts(c), error_lines(c)))
        expected_errors = {
            "errors": 3,
            "stage/decode": 2,
            "stage/read": 1,
            "class/ItemError": 2,
            "class/ValueError": 1,
            "identifier_hits": 0,
        }
        assert_that(parted, equal_to([(({"inputs_ok": 2, "images": 5, "errors": 7}, expected_errors), 3)]))


def test_a_run_without_inputs_counts_nothing():
    with beam.Pipeline(runner=FnApiRunner()) as p:
        counts = (p | "S" >> beam.Create([]), p | "E" >> beam.Create([])) | RunCounts()
        assert_that(counts | beam.Map(lambda c: (split_counts(c), error_lines(c))), equal_to([(({}, {}), 0)]))
