"""Progress of a run: periodic log lines on every worker, and a progress bar for local runs.

Workers on the same machine as the launcher (DirectRunner, in-process or multi_processing)
append one byte per finished input to a file the launcher names ('.' done, 'x' failed);
the launcher's ProgressBar polls its size. Remote workers (Dataflow) only log, and the
job's counters show progress in its console.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

_LOG = logging.getLogger("medprep.progress")
DONE, FAILED = b".", b"x"
LOG_EVERY_S = 30.0


def mark_done(path: str, ok: bool) -> None:
    """Append one input's outcome to the progress file (an O_APPEND write of one byte is atomic)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, DONE if ok else FAILED)
    finally:
        os.close(fd)


class WorkerProgress:
    """Per-process tally of finished inputs, logged at INFO every LOG_EVERY_S seconds."""

    def __init__(self, name: str):
        self.name, self.done, self.failed = name, 0, 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += not ok
            now = time.monotonic()
            if now - self._last < LOG_EVERY_S:
                return
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
        _LOG.info(
            "%s: %d inputs finished in this worker (%d failed), %.2f inputs/s", self.name, self.done, self.failed, rate
        )


def format_bar(done: int, failed: int, total: int, elapsed: float, width: int = 30) -> str:
    """One status line: bar (when the total is known), counts, rate and time left."""
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = []
    if total:
        filled = min(width, int(width * done / total))
        parts.append("[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} inputs")
    else:
        parts.append(f"{done} inputs")
    parts.append(f"{failed} failed")
    parts.append(f"{rate:.1f}/s")
    if total and rate > 0 and done < total:
        left = int((total - done) / rate)
        parts.append(f"ETA {left // 60}:{left % 60:02d}")
    return "  ".join(parts)


class ProgressBar:
    """Context manager: while the run lasts, redraw the status line (a TTY) or print it every 30 s;
    the final counts are printed when the run ends."""

    def __init__(self, path: str, total: int = 0, stream=None, interval: float = 0.5):
        self.path, self.total, self.stream, self.interval = path, total, stream or sys.stderr, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="medprep-progress", daemon=True)

    def counts(self) -> tuple[int, int]:
        """(finished inputs, failed inputs) so far."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return 0, 0
        return len(data), data.count(FAILED)

    def _loop(self) -> None:
        tty = self.stream.isatty()
        start = last_print = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if tty:
                self.stream.write("\r" + format_bar(*self.counts(), self.total, now - start))
                self.stream.flush()
            elif now - last_print >= LOG_EVERY_S:
                last_print = now
                self.stream.write("medprep: " + format_bar(*self.counts(), self.total, now - start) + "\n")
                self.stream.flush()
        final = format_bar(*self.counts(), self.total, time.monotonic() - start)
        self.stream.write(("\r" if tty else "medprep: ") + final + "\n")
        self.stream.flush()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False
