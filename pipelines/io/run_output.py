"""A run's hold on its output folder: claimed at start-up, committed (or not) at the end.

claim_output: take the folder's lock, finish a commit a killed run left half-done, remove the staging
and backup folders of runs that died (saying what was removed), refuse outputs already there unless
--overwrite. commit_run: check the error budget and that the lock is still this run's, then commit
the staging folder (medprep.pipelines.io.commit) and release the lock.
"""

from __future__ import annotations

import logging
import os

from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.io.commit import (
    BACKUP_PREFIX,
    STAGING_PREFIX,
    commit_outputs,
    finish,
    read_journal,
    remove_tree,
)
from medprep.pipelines.io.output_lock import LockHeld, OutputLock, read_holder, release_job_lock
from medprep.pipelines.io.outputs import existing_outputs, join, write_bytes
from medprep.pipelines.records.error_budget import error_report, over_budget

_LOG = logging.getLogger(__name__)

ERROR_REPORT = "error_budget.txt"  # written into the staging folder of a run over budget


class ErrorBudgetExceeded(Exception):
    """The run failed on too many inputs; nothing was committed. str() is the report to print."""


class LockLost(Exception):
    """Another run took the output folder's lock while this one ran; nothing was committed."""


def run_id(staging_dir: str) -> str:
    """The run's id: its staging folder's suffix."""
    name = staging_dir.rstrip("/").rsplit("/", 1)[-1]
    return name[len(STAGING_PREFIX) :] if name.startswith(STAGING_PREFIX) else name


def _hidden_folders(output_dir: str) -> list[str]:
    """Names of the staging and backup folders in output_dir."""
    prefixes = (STAGING_PREFIX, BACKUP_PREFIX)
    if "://" not in output_dir:
        if not os.path.isdir(output_dir):
            return []
        return sorted(n for n in os.listdir(output_dir) if n.startswith(prefixes))
    base = output_dir.rstrip("/") + "/"
    names = set()
    for prefix in prefixes:
        for m in FileSystems.match([base + prefix + "*/**"])[0].metadata_list:
            names.add(m.path[len(base) :].split("/", 1)[0])
    return sorted(names)


def leftover_runs(output_dir: str) -> list[str]:
    """Staging/backup folders no live run is using: not the lock holder's, not an unfinished commit's."""
    keep = set()
    try:
        holder = read_holder(output_dir)
    except ValueError:
        holder = None
    if holder is not None and not holder.stale_reason():
        keep |= {STAGING_PREFIX + holder.run, BACKUP_PREFIX + holder.run}
    journal = read_journal(output_dir)
    if journal is not None:
        keep |= {journal.staging, journal.backup}
    return [name for name in _hidden_folders(output_dir) if name not in keep]


def remove_leftovers(output_dir: str, own_staging: str = "") -> list[str]:
    """Delete dead runs' staging/backup folders (never `own_staging`); returns one line per folder removed."""
    removed = []
    own = own_staging.rstrip("/").rsplit("/", 1)[-1] if own_staging else ""
    for name in leftover_runs(output_dir):
        if name == own:
            continue
        size = remove_tree(join(output_dir, name))
        removed.append(f"removed {name} ({size / 1e6:.1f} MB), left by a run that did not finish")
    return removed


def claim_output(
    output_dir: str, overwrite: bool, break_lock: bool, staging_dir: str, command: str, job: bool = False
) -> OutputLock:
    """Start-up: lock output_dir for this run (raises LockHeld), recover, clean, check; returns the lock.

    job=True: the run is a submitted job that commits itself; the lock has no heartbeat and the job's
    commit releases it.
    """
    lock = OutputLock(output_dir, run_id(staging_dir), command, mode="job" if job else "heartbeat")
    lock.acquire(break_lock)
    try:
        pending = read_journal(output_dir)
        if pending is not None:
            _LOG.warning("%s: a commit was interrupted; %s", output_dir, finish(output_dir, pending))
        for line in remove_leftovers(output_dir, staging_dir):
            _LOG.warning("%s: %s", output_dir, line)
        present = existing_outputs(output_dir)
        if present and not overwrite:
            raise FileExistsError(
                f"{output_dir} already holds medprep outputs ({', '.join(present)}); "
                "pass --overwrite to replace them or choose another folder"
            )
    except BaseException:
        lock.release()
        raise
    return lock


def read_summary(folder: str) -> dict:
    """summary.json of an output or staging folder."""
    import json

    with FileSystems.open(join(folder, "summary.json"), compression_type="uncompressed") as fh:
        return json.loads(fh.read())


def commit_run(
    staging_dir: str,
    output_dir: str,
    max_error_fraction: float,
    max_errors: int = -1,
    lock: OutputLock | None = None,
) -> None:
    """The end of a successful run: within the error budget and still holding the lock, commit.

    lock=None: the job commits itself (flex templates); the lock named after its staging folder is
    checked and released here. Over budget: ErrorBudgetExceeded, the staging folder kept with
    error_budget.txt beside its summary.json; output_dir untouched.
    """
    run = run_id(staging_dir)
    pending = read_journal(output_dir)
    if FileSystems.exists(join(staging_dir, "summary.json")) and (pending is None or not pending.names(staging_dir)):
        summary = read_summary(staging_dir)
        reason = over_budget(summary, max_error_fraction, max_errors)
        if reason:
            report = error_report(summary, reason, staging_dir, first_errors(staging_dir, summary))
            write_bytes(join(staging_dir, ERROR_REPORT), report.encode("utf-8"))
            if lock is None:
                release_job_lock(output_dir, run)
            raise ErrorBudgetExceeded(report)
        held = lock.still_held() if lock is not None else _job_holds(output_dir, run)
        if not held:
            why = lock.lost if lock is not None else "the lock no longer names this job"
            raise LockLost(f"{output_dir}: {why}; nothing committed (this run's outputs are in {staging_dir})")
    # A job's commit step may fail part-way and be retried by the runner: its lock is kept until the
    # commit is done (a retry finds its own journal and finishes it).
    commit_outputs(staging_dir, output_dir)
    if lock is None:
        release_job_lock(output_dir, run)


def first_errors(folder: str, summary: dict, count: int = 3) -> list[dict]:
    """The first `count` error lines of the error files summary.json lists."""
    import json

    found: list[dict] = []
    for f in summary.get("files", []):
        if not f["path"].startswith("errors/") or len(found) >= count:
            continue
        with FileSystems.open(join(folder, f["path"]), compression_type="uncompressed") as fh:
            for line in fh:
                if line.strip():
                    found.append(json.loads(line))
                if len(found) >= count:
                    break
    return found


def commit_step(_, config) -> None:
    """The Beam step that ends a job committing itself (config: a Config or EmbedConfig)."""
    commit_run(config.staging_dir, config.output_dir, config.max_error_fraction, config.max_errors)


def _job_holds(output_dir: str, run: str) -> bool:
    try:
        holder = read_holder(output_dir)
    except ValueError:
        return False
    return holder is not None and holder.run == run


__all__ = [
    "ErrorBudgetExceeded",
    "LockHeld",
    "LockLost",
    "claim_output",
    "commit_run",
    "commit_step",
    "leftover_runs",
    "read_summary",
    "remove_leftovers",
    "run_id",
]
