"""The one exception type per-item code raises: it names the pipeline stage that failed.

`stage(name)` also times its block: inside `timed_stages()`, seconds per stage accumulate
in the dict it yields (the pipelines turn them into per-stage latency metrics).
"""

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Literal

_URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def strip_credentials(text: str) -> str:
    """Every scheme://user:password@host in text as scheme://host (credentials never reach an output or log)."""
    return _URL_CREDENTIALS.sub(r"\1", text) if "@" in text else text


STAGES = ("manifest", "read", "decode", "transform", "encode", "text", "record", "privacy", "timeout")


class ItemError(Exception):
    """A failure of one input item; `stage` is one of STAGES, the message is user-facing."""

    def __init__(self, stage: str, message: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        message = strip_credentials(message)
        super().__init__(message)
        self.stage = stage
        self.message = message

    def __reduce__(self) -> tuple[type["ItemError"], tuple[str, str]]:  # keep stage across pickling (multi-process)
        return (ItemError, (self.stage, self.message))


_TIMES = threading.local()


@contextmanager
def timed_stages() -> Iterator[dict[str, float]]:
    """Collect {stage: seconds} for `stage` blocks run in this thread inside the `with`.

    Times are exclusive: a stage nested in another counts only for the inner one.
    """
    outer = getattr(_TIMES, "current", None)
    times: dict[str, float] = {}
    _TIMES.current = times
    try:
        yield times
    finally:
        _TIMES.current = outer


class stage:
    """Context manager: any non-ItemError exception inside becomes ItemError(name, …); timed."""

    def __init__(self, name: str):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        self.name = name

    def __enter__(self) -> "stage":
        stack = _TIMES.__dict__.setdefault("stack", [])
        self._start, self._children = time.perf_counter(), 0.0
        stack.append(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        elapsed = time.perf_counter() - self._start
        stack = _TIMES.stack
        stack.pop()
        if stack:
            stack[-1]._children += elapsed
        times = getattr(_TIMES, "current", None)
        if times is not None:
            times[self.name] = times.get(self.name, 0.0) + elapsed - self._children
        if exc is None or isinstance(exc, ItemError) or not isinstance(exc, Exception):
            return False
        raise ItemError(self.name, f"{type(exc).__name__}: {exc}") from exc
