"""One run per output folder: a lock file created only if absent, kept alive by a heartbeat.

Local folders: OUT/.medprep-lock.json made with an exclusive create (O_CREAT | O_EXCL). gs://: the
same object written with `ifGenerationMatch=0` (create only if absent), the heartbeat and the
release conditioned on the generation this run wrote, so a run never overwrites or deletes a lock it
does not hold. A lock whose heartbeat is older than STALE_SECONDS, or whose process is gone (same
host), is stale: reported, and broken only when the user asks (--break_lock). A lock held for a job
that commits itself (flex templates) has no heartbeat; it is released by the job's commit.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from medprep.pipelines.io.outputs import join, write_bytes

_LOG = logging.getLogger(__name__)

LOCK = ".medprep-lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: the run (its staging folder's id), where it runs, and its last heartbeat (epoch s)."""

    run: str
    host: str
    pid: int
    command: str
    started: float
    heartbeat: float
    mode: str = "heartbeat"  # or "job": a submitted job that commits (and unlocks) itself

    def to_json(self) -> bytes:
        """JSON bytes."""
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    def stale_reason(self, now: float | None = None) -> str:
        """Why this lock looks abandoned ('' when it does not)."""
        now = _now() if now is None else now
        if self.dead_here():
            return f"process {self.pid} on this host is gone"
        if self.mode == "heartbeat" and now - self.heartbeat > STALE_SECONDS:
            return f"no heartbeat for {now - self.heartbeat:.0f} s"
        return ""

    def dead_here(self) -> bool:
        """A run on this host whose process has ended: certainly dead (a job's launcher exits while the job
        runs, so a job's lock is never judged by its pid)."""
        return self.mode == "heartbeat" and self.host == socket.gethostname() and self.pid > 0 and not _alive(self.pid)

    def describe(self, now: float | None = None) -> str:
        """One line naming the holder."""
        now = _now() if now is None else now
        beat = f"last heartbeat {now - self.heartbeat:.0f} s ago" if self.mode == "heartbeat" else "a submitted job"
        return f"run {self.run} ({self.command}, pid {self.pid} on {self.host}, started {_iso(self.started)}, {beat})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockHeld(Exception):
    """Another run holds the output folder's lock."""

    def __init__(self, path: str, holder: Holder | None, stale: str):
        self.path, self.holder, self.stale = path, holder, stale
        who = holder.describe() if holder else "an unreadable lock file"
        advice = (
            f"it looks stale ({stale}); pass --break_lock to take it over"
            if stale
            else "wait for it to finish, or pass --break_lock if you know it is dead"
            if holder is not None and holder.mode == "job"
            else "wait for it to finish or choose another folder"
        )
        super().__init__(f"{path} is locked by {who}; {advice}")


class _Store:
    """Create-if-absent, read, conditional replace and conditional delete of the lock file."""

    def __init__(self, path: str):
        self.path = path
        self.generation: int | None = None  # gs:// only: the object generation this run wrote

    def _blob(self):
        from google.cloud import storage

        from medprep.pipelines.io.sources.gcs import use_emulator_if_configured

        bucket, _, name = self.path[len("gs://") :].partition("/")
        if use_emulator_if_configured():
            client = storage.Client.create_anonymous_client()
        else:
            client = storage.Client()
        return client.bucket(bucket).blob(name)

    def create(self, data: bytes) -> bool:
        """Write the lock if no lock exists; False if one does."""
        if self.path.startswith("gs://"):
            from google.api_core import exceptions

            blob = self._blob()
            if blob.exists():  # the emulator ignores preconditions: check first, then rely on GCS's own check
                return False
            try:
                blob.upload_from_string(data, if_generation_match=0)
            except exceptions.PreconditionFailed:
                return False
            self.generation = blob.generation
            return True
        if "://" in self.path:
            raise ValueError(f"cannot lock {self.path}: only local folders and gs:// are supported")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def read(self) -> Holder | None:
        """The holder written in the lock (None if there is no lock; raises ValueError if unreadable)."""
        return self.read_with_generation()[0]

    def read_with_generation(self) -> tuple[Holder | None, int | None]:
        """read(), and on gs:// the generation of the object read (to delete exactly that one)."""
        generation = None
        if self.path.startswith("gs://"):
            from google.api_core import exceptions

            blob = self._blob()
            try:
                data = blob.download_as_bytes()
            except exceptions.NotFound:
                return None, None
            generation = blob.generation
        else:
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                return None, None
        try:
            return Holder(**json.loads(data)), generation
        except (ValueError, TypeError) as exc:
            raise ValueError(f"unreadable lock {self.path}: {exc}") from None

    def replace(self, data: bytes) -> None:
        """Rewrite the lock this run holds (heartbeat)."""
        if self.path.startswith("gs://"):
            blob = self._blob()
            blob.upload_from_string(data, if_generation_match=self.generation)
            self.generation = blob.generation
            return
        write_bytes(self.path, data)

    def delete(self, generation: int | None = None) -> None:
        """Remove the lock (on gs://, only the generation given)."""
        if self.path.startswith("gs://"):
            from google.api_core import exceptions

            try:
                self._blob().delete(if_generation_match=generation)
            except exceptions.NotFound:
                pass
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class OutputLock:
    """The lock of one output folder, held by this process for one run (a context manager)."""

    def __init__(self, output_dir: str, run: str, command: str, mode: str = "heartbeat"):
        self.output_dir, self.run, self.command, self.mode = output_dir, run, command, mode
        self._store = _Store(join(output_dir, LOCK))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = ""  # why the heartbeat found the lock no longer ours
        self.broken: Holder | None = None  # the stale holder this run took the lock from

    def _holder(self) -> Holder:
        now = _now()
        return Holder(self.run, socket.gethostname(), os.getpid(), self.command, self._started, now, self.mode)

    def acquire(self, break_lock: bool = False) -> OutputLock:
        """Take the lock or raise LockHeld; with break_lock, a stale lock (or a job's) is taken over."""
        if "://" not in self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
        self._started = _now()
        for _ in range(3):
            if self._store.create(self._holder().to_json()):
                break
            try:
                holder, generation = self._store.read_with_generation()
            except ValueError:
                holder, generation = None, self._store_generation()
            if holder is None and not self._store_exists():
                continue  # released between our create and read: try again
            stale = "unreadable" if holder is None else holder.stale_reason()
            dead = holder is not None and holder.dead_here()  # certain: taken over without being asked
            if dead or (break_lock and (stale or (holder is not None and holder.mode == "job"))):
                _LOG.warning(
                    "taking over the lock of %s from %s (%s)",
                    self.output_dir,
                    holder.describe() if holder else "an unreadable lock",
                    stale or "--break_lock",
                )
                self.broken = holder
                self._store.delete(generation)
                continue
            raise LockHeld(self.output_dir, holder, stale)
        else:
            raise LockHeld(self.output_dir, None, "")
        if self.mode == "heartbeat":
            self._thread = threading.Thread(target=self._beat, name="medprep-lock-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _store_exists(self) -> bool:
        if self.output_dir.startswith("gs://"):
            return bool(self._store._blob().exists())
        return os.path.lexists(self._store.path)

    def _store_generation(self) -> int | None:
        if not self.output_dir.startswith("gs://"):
            return None
        blob = self._store._blob()
        blob.reload()
        return blob.generation

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if not self.still_held():
                    return
                self._store.replace(self._holder().to_json())
            except Exception as exc:  # a missed beat is not fatal; ten in a row make the lock stale
                _LOG.warning("lock heartbeat for %s failed: %s", self.output_dir, exc)

    def still_held(self) -> bool:
        """True while the lock file names this run (checked before committing)."""
        try:
            holder = self._store.read()
        except ValueError as exc:
            self.lost = str(exc)
            return False
        if holder is None or holder.run != self.run:
            self.lost = "the lock was removed" if holder is None else f"the lock was taken by {holder.describe()}"
            return False
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.still_held():
            self._store.delete(self._store.generation)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(output_dir: str) -> Holder | None:
    """Who holds output_dir's lock now (None if nobody; raises ValueError if the lock is unreadable)."""
    return _Store(join(output_dir, LOCK)).read()


def release_job_lock(output_dir: str, run: str) -> None:
    """The job's own release (flex templates): remove the lock if it names `run`."""
    store = _Store(join(output_dir, LOCK))
    holder = store.read()
    if holder is not None and holder.run == run:
        store.delete()
