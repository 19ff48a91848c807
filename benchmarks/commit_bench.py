"""What issue 17's safety costs: checked reads against plain reads, the journaled commit by file count, the lock.

python -m benchmarks.commit_bench
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from apache_beam.io.filesystems import FileSystems

from benchmarks.embed_bench import best
from medprep.pipelines.io.commit import commit_outputs
from medprep.pipelines.io.output_lock import OutputLock
from medprep.pipelines.io.sources.files import read_bytes


def _best_ms(fn, repeat: int = 30) -> float:
    return best(fn, repeat) * 1e3


def read_rows(folder: str) -> list[tuple[str, float]]:
    """A 10 MB file read whole: the plain floor, Beam's FileSystems (the read before issue 17), read_bytes."""
    path = os.path.join(folder, "x.dcm")
    with open(path, "wb") as fh:
        fh.write(os.urandom(10 << 20))

    def plain() -> None:
        with open(path, "rb") as fh:
            fh.read()

    def beam() -> None:
        with FileSystems.open(path, compression_type="uncompressed") as fh:
            fh.read()

    return [
        ("open().read() (floor)", _best_ms(plain)),
        ("Beam FileSystems.open().read()", _best_ms(beam)),
        ("read_bytes (regular file, size checked, bounded)", _best_ms(lambda: read_bytes(path))),
    ]


def _dataset(base: str, count: int, tag: bytes) -> None:
    for i in range(count):
        path = os.path.join(base, "parquet", f"train-{i:05d}-of-{count:05d}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(tag * 100)


def commit_rows(folder: str) -> list[tuple[str, float]]:
    """Replace a dataset of n shards with another of n shards (local disk)."""
    rows = []
    for count in (10, 100, 1000):
        out = os.path.join(folder, f"out{count}")
        staging = os.path.join(out, ".staging-bench")
        _dataset(out, count, b"old")
        _dataset(staging, count, b"new")
        with open(os.path.join(out, "summary.json"), "w") as fh:
            fh.write("{}")
        files = [{"path": f"parquet/train-{i:05d}-of-{count:05d}.parquet"} for i in range(count)]
        with open(os.path.join(staging, "summary.json"), "w") as fh:
            json.dump({"files": files}, fh)
        start = time.perf_counter()
        commit_outputs(staging, out)
        rows.append((f"journaled commit, {count} old + {count} new shards", (time.perf_counter() - start) * 1e3))
    return rows


def lock_rows(folder: str) -> list[tuple[str, float]]:
    """Take and release an output folder's lock (local)."""

    def cycle() -> None:
        OutputLock(folder, "bench", "bench").acquire().release()

    return [("lock acquire + release (heartbeat thread started and stopped)", _best_ms(cycle, 10))]


def main() -> None:
    folder = tempfile.mkdtemp(prefix="medprep-commit-bench-")
    try:
        load = os.getloadavg()[0]
        print(f"load average {load:.1f}")
        for label, ms in read_rows(folder) + commit_rows(folder) + lock_rows(folder):
            print(f"{label:<60} {ms:9.2f} ms")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
