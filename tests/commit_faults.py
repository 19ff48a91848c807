"""Test helper: run a commit that fails after its Nth step (medprep.pipelines.io.commit.STEPS), as a crash would."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medprep.pipelines.io import commit


class Crash(Exception):
    """The injected fault."""


def commit_crashing_at(step: int, staging: str, out: str, watch: Callable[[], None] | None = None) -> None:
    """commit_outputs(staging, out) made to raise Crash right after step `step`; `watch` runs after every step
    (to look at the folder mid-commit). Fails the test if the commit ends before that step."""

    def hook(n: int, what: str) -> None:
        if watch is not None:
            watch()
        if n == step:
            raise Crash(what)

    commit.STEPS.hook = hook
    try:
        with pytest.raises(Crash):
            commit.commit_outputs(staging, out)
    finally:
        commit.STEPS.hook = None


def count_steps(staging: str, out: str) -> int:
    """Commit for real, counting the steps."""
    steps: list[str] = []
    commit.STEPS.hook = lambda n, what: steps.append(what)
    try:
        commit.commit_outputs(staging, out)
    finally:
        commit.STEPS.hook = None
    return len(steps)
