"""`medprep recover OUT`: finish (or roll back) a commit a killed run left half-done, remove dead runs' folders."""

from __future__ import annotations

import argparse
import sys


def recover(output_dir: str, rollback: bool = False, break_lock: bool = False) -> list[str]:
    """Bring output_dir back to one whole dataset (the new one, or with rollback the previous one) and remove
    the staging/backup folders of runs that died; returns what was done, one line each. Raises LockHeld
    when a live run holds the folder."""
    import uuid

    from medprep.pipelines.io.commit import finish, read_journal
    from medprep.pipelines.io.output_lock import OutputLock
    from medprep.pipelines.io.run_output import remove_leftovers

    done = []
    with OutputLock(output_dir, f"recover-{uuid.uuid4().hex[:12]}", "recover").acquire(break_lock) as lock:
        if lock.broken is not None:
            done.append(f"broke the lock of {lock.broken.describe()}")
        journal = read_journal(output_dir)
        if journal is not None:
            done.append(f"interrupted commit ({journal.phase} phase): {finish(output_dir, journal, rollback)}")
        done += remove_leftovers(output_dir)
    return done


def main(argv: list[str]) -> int:
    """CLI entry: 0 when the folder is whole (whatever was done), 2 when a live run holds it."""
    from medprep.pipelines.io.output_lock import LockHeld

    ap = argparse.ArgumentParser(
        prog="medprep recover",
        description="Finish (or roll back) a commit a killed run left half-done; remove dead runs' folders.",
    )
    ap.add_argument("output_dir", help="a medprep output folder (local or gs://)")
    ap.add_argument(
        "--rollback",
        action="store_true",
        help="restore the previous dataset instead of finishing an interrupted commit (the new run's files are "
        "then removed with the other leftovers)",
    )
    ap.add_argument(
        "--break_lock",
        action="store_true",
        help="take over the folder's lock when the run holding it is gone (no heartbeat for 5 minutes, its "
        "process ended, or a submitted job that failed)",
    )
    args = ap.parse_args(argv)
    from medprep.pipelines.io.outputs import present

    if not present(args.output_dir):  # a misspelt folder is not "nothing to recover" (nor created)
        print(f"medprep: error: output_dir: {args.output_dir} not found", file=sys.stderr)
        return 2
    try:
        done = recover(args.output_dir, args.rollback, args.break_lock)
    except LockHeld as exc:
        print(f"medprep: error: {exc}", file=sys.stderr)
        return 2
    for line in done or ["nothing to recover: no interrupted commit, no leftover staging"]:
        print(f"{args.output_dir}: {line}")
    return 0
