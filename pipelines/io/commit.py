"""Replace an output folder's dataset with a finished run's, safe to kill at any instant.

A commit journal (OUT/.medprep-commit.json) is written before anything is touched: which staging
folder replaces which files, through which backup folder, and the phase reached. Phases, each made
of idempotent moves ("move if the source is still there"), the journal rewritten atomically between
them:

  backup   every old output file moves into OUT/.replaced-RUN/ (the old summary.json first, so a
           half-replaced folder never looks complete);
  install  every new file moves from staging into OUT (the new summary.json last);
  cleanup  the backup and the staging folder are deleted, then the journal.

Until `install` ends the old dataset is whole (in OUT and the backup folder), and from `backup` on
the new one is whole (in staging and OUT); OUT itself never holds a mix of old and new files. A
commit interrupted anywhere is finished by `recover` (or by the next run into OUT), or rolled back:
`unstage` moves new files back into staging, `restore` moves the old ones back into OUT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.io.outputs import OUTPUT_PARTS, files_under, join, present, write_bytes

_LOG = logging.getLogger(__name__)

JOURNAL = ".medprep-commit.json"
BACKUP_PREFIX = ".replaced-"
STAGING_PREFIX = ".staging-"
KILL_AT_ENV = "MEDPREP_COMMIT_KILL_AT"  # tests: SIGKILL this process at the Nth step of a commit


@dataclass(frozen=True)
class Journal:
    """What a commit replaces with what (paths relative to OUT), and how far it got."""

    staging: str
    backup: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    phase: str = "backup"
    started: str = ""
    finished: tuple[str, ...] = field(default=())

    def to_json(self) -> bytes:
        """Stable JSON bytes."""
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode("utf-8")

    def names(self, staging: str) -> bool:
        """True when this journal commits the staging folder `staging` (a path)."""
        return self.staging == staging.rstrip("/").rsplit("/", 1)[-1]


class _Steps:
    """Counts a commit's elementary steps; MEDPREP_COMMIT_KILL_AT=N makes the Nth one a real SIGKILL
    (tests), and `hook` (tests) is called after every step."""

    def __init__(self) -> None:
        self.count = 0
        self.hook = None

    def __call__(self, what: str) -> None:
        self.count += 1
        kill_at = os.environ.get(KILL_AT_ENV)
        if kill_at and self.count == int(kill_at):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if self.hook is not None:
            self.hook(self.count, what)


STEPS = _Steps()


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return fh.read()


def _exists(path: str) -> bool:
    return os.path.lexists(path) if "://" not in path else FileSystems.exists(path)


def _move(src: str, dst: str) -> bool:
    """Move one file if it is still at `src` (a repeat after a crash finds it moved); True if moved."""
    if not _exists(src):
        return False
    if "://" not in src:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    else:  # a copy then a delete: a crash between them leaves both, and the repeat copies again
        FileSystems.rename([src], [dst])
    STEPS(f"move {src} -> {dst}")
    return True


def remove_tree(path: str) -> int:
    """Delete a folder (local) or every object under a prefix (gs://); returns the bytes removed."""
    if "://" not in path:
        if not os.path.lexists(path):
            return 0
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        shutil.rmtree(path, ignore_errors=True)
        return size
    matched = FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list
    if matched:
        FileSystems.delete([m.path for m in matched])
    return sum(m.size_in_bytes for m in matched)


def read_journal(output_dir: str) -> Journal | None:
    """The journal of an unfinished commit into output_dir, or None."""
    path = join(output_dir, JOURNAL)
    if not _exists(path):
        return None
    data: dict[str, Any] = json.loads(_read(path))
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return Journal(**fields)


def _save(output_dir: str, journal: Journal) -> Journal:
    write_bytes(join(output_dir, JOURNAL), journal.to_json(), durable=True)
    STEPS(f"journal {journal.phase}")
    return journal


def _old_files(output_dir: str) -> list[str]:
    """Every output file now in output_dir, summary.json first."""
    files = [rel for part in OUTPUT_PARTS if present(join(output_dir, part)) for rel in files_under(output_dir, part)]
    return sorted(files, key=lambda rel: (rel != "summary.json", rel))


def _new_files(staging: str) -> list[str]:
    """Every file the run in `staging` made (from its summary.json), summary.json last."""
    summary = json.loads(_read(join(staging, "summary.json")))
    files = sorted({f["path"] for f in summary.get("files", [])})
    files += [rel for rel in ("preview.png",) if _exists(join(staging, rel))]
    return files + ["summary.json"]


def _drop_empty_folders(output_dir: str) -> None:
    for part in OUTPUT_PARTS:
        folder = join(output_dir, part)
        if "://" not in folder and os.path.isdir(folder) and not any(files for _, _, files in os.walk(folder)):
            shutil.rmtree(folder)


def _run(output_dir: str, journal: Journal) -> Journal:
    """Carry a journal through its remaining phases; every step may be repeated after a crash."""
    out = lambda rel: join(output_dir, rel)  # noqa: E731
    staged = lambda rel: join(output_dir, journal.staging, rel)  # noqa: E731
    backed = lambda rel: join(output_dir, journal.backup, rel)  # noqa: E731
    if journal.phase == "backup":
        for rel in journal.old:
            _move(out(rel), backed(rel))
        journal = _save(output_dir, replace(journal, phase="install"))
    if journal.phase == "install":
        for rel in journal.new:
            _move(staged(rel), out(rel))
        journal = _save(output_dir, replace(journal, phase="cleanup", finished=("installed",)))
    if journal.phase == "unstage":  # rolling back after install began: the new files go back to staging
        for rel in journal.new:
            _move(out(rel), staged(rel))
        journal = _save(output_dir, replace(journal, phase="restore"))
    if journal.phase == "restore":
        for rel in journal.old[1:] + journal.old[:1]:  # the old summary.json last
            _move(backed(rel), out(rel))
        journal = _save(output_dir, replace(journal, phase="cleanup", finished=("restored",)))
    if journal.phase == "cleanup":
        remove_tree(join(output_dir, journal.backup))
        STEPS("remove backup")
        if journal.finished == ("installed",):
            remove_tree(join(output_dir, journal.staging))
            STEPS("remove staging")
        _drop_empty_folders(output_dir)
        FileSystems.delete([join(output_dir, JOURNAL)])
        STEPS("remove journal")
    return journal


def commit_outputs(staging: str, output_dir: str) -> None:
    """Replace output_dir's outputs with the finished run's in `staging` (a folder inside output_dir).

    Safe to kill at any instant and to repeat: an interrupted commit of another staging folder is
    finished first; a repeat of a commit already done does nothing.
    """
    import datetime

    STEPS.count = 0
    name = staging.rstrip("/").rsplit("/", 1)[-1] if "://" in staging else os.path.basename(staging.rstrip("/"))
    pending = read_journal(output_dir)
    if pending is not None and pending.staging != name:
        finish(output_dir, pending)
        pending = None
    if pending is None:
        if not _exists(join(staging, "summary.json")):
            if _exists(join(output_dir, "summary.json")) and not present(staging):
                return  # committed already (a retried commit step)
            raise FileNotFoundError(f"nothing to commit: {join(staging, 'summary.json')} is missing")
        new = _new_files(staging)
        missing = [rel for rel in new if not _exists(join(staging, rel))]
        if missing:  # never replace a whole dataset with an incomplete one
            raise FileNotFoundError(
                f"nothing committed: {staging} lacks {len(missing)} listed file(s), e.g. {missing[0]}"
            )
        run = name[len(STAGING_PREFIX) :] if name.startswith(STAGING_PREFIX) else name
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        journal = Journal(name, BACKUP_PREFIX + run, tuple(_old_files(output_dir)), tuple(new))
        pending = _save(output_dir, replace(journal, started=started))
    _run(output_dir, pending)


def finish(output_dir: str, journal: Journal, rollback: bool = False) -> str:
    """Finish (or roll back) an interrupted commit; returns what was done, in words."""
    STEPS.count = 0
    if rollback and journal.phase in ("backup", "install"):
        journal = _save(output_dir, replace(journal, phase="restore" if journal.phase == "backup" else "unstage"))
    done = _run(output_dir, journal)
    if done.finished == ("restored",):
        return f"rolled back: the previous dataset is restored ({len(journal.old)} files)"
    return f"finished: the new dataset from {journal.staging} is in place ({len(journal.new)} files)"
