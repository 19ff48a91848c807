"""Per-item error handling: an item either yields all its outputs or one error line.

Error lines are dicts {ref, row, stage, error, message}; `error` is the exception class.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import cast

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

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


class RunningItem:
    """fn() started now: inline when it needs neither a time limit nor to run beside others, else in a
    daemon thread; `result()` waits for it until its deadline (start + timeout s)."""

    def __init__(self, fn, timeout: float | None, concurrent: bool = False):
        self.timeout = timeout
        self._box: dict = {}
        self._thread: threading.Thread | None = None
        if not timeout and not concurrent:
            self._run(fn)
            return
        self._deadline = time.monotonic() + timeout if timeout else None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="medprep-item", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._box["value"] = fn()
        except BaseException as exc:  # noqa: B036 -- handed back to the caller's thread
            self._box["error"] = exc

    def result(self):
        """fn's value or exception; ItemError('timeout') past the deadline.

        A Python-level overrun is stopped by an asynchronous exception; a hang inside C code cannot be
        interrupted and is abandoned (the thread is a daemon), so the pipeline still goes on.
        """
        thread = self._thread
        if thread is not None:
            thread.join(None if self._deadline is None else max(0.0, self._deadline - time.monotonic()))
            if thread.is_alive():
                ident = cast(int, thread.ident)  # set once the thread has started
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(ItemTimeout))
                raise ItemError(
                    "timeout", f"input took longer than the {self.timeout:g} s limit (--item_timeout); abandoned"
                )
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]


_retries_lock = threading.Lock()
_retries_reported = [0]


def _new_retries() -> int:
    """DICOMweb requests retried in this process since the last call (each counted once, whichever
    item or step reports it: items run concurrently, so a per-item difference would count twice)."""
    from medprep.pipelines.io.sources.dicomweb import retries_so_far

    with _retries_lock:
        now = retries_so_far()
        new, _retries_reported[0] = now - _retries_reported[0], now
    return new


_item = threading.local()


def count(name: str, n: int = 1) -> None:
    """Add n to the counter `name` of the input being prepared in this thread (reported as a Beam metric of
    its step once the input is done, failed or not; outside an input, nothing)."""
    counters = getattr(_item, "counters", None)
    if counters is not None:
        counters[name] = counters.get(name, 0) + n


class ItemDoFn(beam.DoFn):
    """Base DoFn: subclasses implement `outputs(element)` -> iterable of (record, stats).

    The main output gets the records, tagged output STATS the summed stats plus one
    `inputs_ok` per input, tagged output ERRORS one error line per failed input. Outputs
    are buffered per item so a failure part-way loses nothing and duplicates nothing.
    Every input is timed (per stage) into Beam metrics and reported to the progress display.
    """

    default_stage = "record"
    timeout: float | None = None  # seconds per item (None: no limit)
    threads = 1  # items prepared at once in one worker process (--item_threads)
    concurrent_items = False  # True where outputs() may run in several threads at once (no shared state)
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

    def _count(self, counters: dict) -> None:
        for name, n in sorted(dict(counters).items()):  # a copy: an abandoned (timed-out) input may still add
            self.metrics.inc(name, n)

    def start_bundle(self) -> None:
        self._running: collections.deque = collections.deque()

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam) -> Iterator:
        """Start the item; with `threads` > 1, up to that many run at once and each item's outputs are
        emitted when it is done (in this, a later or finish_bundle's call), in the order items started."""
        counters: dict = {}

        def run():
            _item.counters = counters  # count() in this input's thread adds here
            try:
                return self._timed_outputs(element)
            finally:
                _item.counters = None

        running = RunningItem(run, self.timeout, concurrent=self.threads > 1)
        self._running.append((element, running, counters, timestamp, window))
        while len(self._running) >= max(1, self.threads):
            yield from self._finish_oldest(windowed=False)

    def finish_bundle(self) -> Iterator:
        while self._running:
            yield from self._finish_oldest(windowed=True)

    def _finish_oldest(self, windowed: bool) -> Iterator:
        """The outputs of the oldest running item. Emitted from a process call they take that element's
        window (every medprep collection is in the one global window); from finish_bundle (`windowed`)
        they must carry their own item's timestamp and window."""
        element, running, counters, timestamp, window = self._running.popleft()
        for out in self._outcome(element, running, counters):
            if not windowed:
                yield out
            elif isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, timestamp, (window,)))
            else:
                yield WindowedValue(out, timestamp, (window,))

    def _outcome(self, element, running: RunningItem, counters: dict) -> Iterator:
        """An item's records and stats, or its one error line; its counters (count()) either way."""
        try:
            produced, times = running.result()
        except Exception as exc:  # every failure of one item becomes an error line
            self._count(counters)
            self.metrics.inc("dicomweb_retries", _new_retries())
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
        self.metrics.inc("dicomweb_retries", _new_retries())  # metrics live in the bundle's thread
        self._count(counters)
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
