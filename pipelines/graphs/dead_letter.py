"""Per-item error handling: an item either yields all its outputs or one error line.

Error lines are dicts {ref, row, stage, error, message}; `error` is the exception class.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import cast

import apache_beam as beam

from medprep.pipelines.graphs.metrics import PipelineMetrics
from medprep.pipelines.graphs.progress import WorkerProgress, mark_done
from medprep.transforms.errors import ItemError, strip_credentials, timed_stages

ERRORS = "errors"
STATS = "stats"
_LOG = logging.getLogger(__name__)


def error_line(ref: str, row: int, stage: str, exc: BaseException) -> dict:
    """The errors/ JSON line for a failed input."""
    if isinstance(exc, ItemError):
        return {
            "ref": strip_credentials(ref),
            "row": row,
            "stage": exc.stage,
            "error": "ItemError",
            "message": exc.message,
        }
    return {
        "ref": strip_credentials(ref),
        "row": row,
        "stage": stage,
        "error": type(exc).__name__,
        "message": strip_credentials(str(exc)),
    }


class ItemTimeout(Exception):
    """Raised inside an item's thread when it overruns its time limit."""


def run_with_limit(fn, timeout: float | None):
    """fn() in a daemon thread, waited on for at most `timeout` s; ItemError('timeout') past it.

    A Python-level overrun is stopped by an asynchronous exception; a hang inside C code cannot be
    interrupted and is abandoned (the thread is a daemon), so the pipeline still goes on.
    """
    if not timeout:
        return fn()
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 -- handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="medprep-item", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        ident = cast(int, thread.ident)  # set once the thread has started
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(ItemTimeout))
        raise ItemError("timeout", f"input took longer than the {timeout:g} s limit (--item_timeout); abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


class ItemDoFn(beam.DoFn):
    """Base DoFn: subclasses implement `outputs(element)` -> iterable of (record, stats).

    The main output gets the records, tagged output STATS the summed stats plus one
    `inputs_ok` per input, tagged output ERRORS one error line per failed input. Outputs
    are buffered per item so a failure part-way loses nothing and duplicates nothing.
    Every input is timed (per stage) into Beam metrics and reported to the progress display.
    """

    default_stage = "record"
    timeout: float | None = None  # seconds per item (None: no limit)
    final = True  # False for a fan-out stage: inputs are counted done by a later stage
    progress_file = ""  # local runs: where finished inputs are marked for the launcher's bar

    def __init__(self):
        self.metrics = PipelineMetrics()
        self._progress: WorkerProgress | None = None  # per worker process, made on first use

    def ref_of(self, element) -> tuple[str, int]:
        """(reference, manifest row from 1; -1 when not from a manifest) naming the element in error lines."""
        return str(element), -1

    def outputs(self, element) -> Iterable[tuple[dict, dict]]:
        raise NotImplementedError

    def _finished(self, ok: bool) -> None:
        self.metrics.inc("inputs")
        self.metrics.inc("inputs_failed", not ok)
        if self._progress is None:
            self._progress = WorkerProgress(type(self).__name__)
        self._progress.add(ok)
        if self.progress_file:
            mark_done(self.progress_file, ok)

    def _timed_outputs(self, element) -> tuple[list, dict]:
        with timed_stages() as times:
            start = time.perf_counter()
            try:
                return list(self.outputs(element)), times
            finally:
                times["item"] = time.perf_counter() - start

    def process(self, element) -> Iterator:
        from medprep.pipelines.io.sources.dicomweb import retries_so_far

        before = retries_so_far()
        try:
            produced, times = run_with_limit(lambda: self._timed_outputs(element), self.timeout)
        except Exception as exc:  # every failure of one item becomes an error line
            self.metrics.inc("dicomweb_retries", retries_so_far() - before)
            ref, row = self.ref_of(element)
            line = error_line(ref, row, self.default_stage, exc)
            if not isinstance(exc, ItemError):
                _LOG.warning(
                    "unexpected %s on %s:\n%s",
                    type(exc).__name__,
                    line["ref"],
                    strip_credentials(traceback.format_exc()),
                )
            self.metrics.inc(f"errors_{line['stage']}")
            self._finished(False)
            yield beam.pvalue.TaggedOutput(ERRORS, line)
            return
        self.metrics.inc("dicomweb_retries", retries_so_far() - before)  # metrics live in the bundle's thread
        self.metrics.stage_times(times)
        if not produced:
            ref, row = self.ref_of(element)
            self.metrics.inc(f"errors_{self.default_stage}")
            self._finished(False)
            empty = ItemError(self.default_stage, "input produced no example")
            yield beam.pvalue.TaggedOutput(ERRORS, error_line(ref, row, self.default_stage, empty))
            return
        if not self.final:
            yield from (out for out, _ in produced)
            return
        total: dict = {"inputs_ok": 1}
        for record, stats in produced:
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
            self.metrics.example(record)
            yield record
        self._finished(True)
        yield beam.pvalue.TaggedOutput(STATS, total)
