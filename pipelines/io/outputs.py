"""Output paths and file writes (local or gs://) under --output_dir."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile

from apache_beam.io.filesystems import FileSystems

OUTPUT_PARTS = ("arrayrecord", "parquet", "errors", "summary.json", "preview.png", "report.html")


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URIs alike."""
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def shard_name(prefix: str, index: int, count: int, suffix: str) -> str:
    """'{prefix}-SSSSS-of-NNNNN{suffix}'."""
    return f"{prefix}-{index:05d}-of-{count:05d}{suffix}"


def write_bytes(path: str, data: bytes, durable: bool = False) -> None:
    """Write a whole file, all or nothing: locally a temp file and an atomic rename (durable: fsync'ed, file
    and folder, before and after the rename, so a power loss cannot leave it empty); one upload on gs://."""
    if "://" not in path:
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return
    with FileSystems.create(path) as fh:
        fh.write(data)


def write_via_local(path: str, write_fn) -> int:
    """Call write_fn(local_path) (for writers that need a local file), then move it to `path`."""
    if "://" not in path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        write_fn(tmp)
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
        return size
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "shard")
        write_fn(local)
        size = os.path.getsize(local)
        with open(local, "rb") as src, FileSystems.create(path) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        return size


def new_staging_dir(output_dir: str) -> str:
    """A fresh hidden folder inside output_dir for one run's files."""
    import uuid

    return join(output_dir, f".staging-{uuid.uuid4().hex[:12]}")


def present(path: str) -> bool:
    """A file or folder exists; on object stores a folder is present when objects are under its prefix."""
    if FileSystems.exists(path):
        return True
    return "://" in path and bool(FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list)


def files_under(base: str, part: str) -> list[str]:
    """Paths relative to `base` of the file `part` or of every file under the folder `part`."""
    path = join(base, part)
    if "://" not in path:
        if os.path.isfile(path):
            return [part]
        return [os.path.relpath(os.path.join(d, f), base) for d, _, files in os.walk(path) for f in files]
    if FileSystems.exists(path):
        return [part]
    root = base.rstrip("/") + "/"
    return [m.path[len(root) :] for m in FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list]


def localize(output_dir: str) -> str:
    """Copy a gs:// output folder (not its staging folders) to a new local temp folder; returns it."""
    base = output_dir.rstrip("/")
    local = tempfile.mkdtemp(prefix="medprep-")
    for m in FileSystems.match([base + "/**"])[0].metadata_list:
        rel = m.path[len(base) + 1 :]
        if not rel or rel.startswith("."):  # staging, backup, journal, lock
            continue
        target = os.path.join(local, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(m.path, compression_type="uncompressed") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    return local


def existing_outputs(output_dir: str) -> list[str]:
    """The medprep outputs already present in output_dir."""
    return [p for p in OUTPUT_PARTS if present(join(output_dir, p))]
