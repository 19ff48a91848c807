"""Local paths and gs:// URIs through Beam's FileSystems."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import BinaryIO

from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.io.sources.dicomweb import client_for
from medprep.pipelines.io.sources.gcs import use_emulator_if_configured
from medprep.transforms.dicomweb_ref import parse_ref
from medprep.transforms.errors import ItemError, stage

use_emulator_if_configured()  # on import, so every worker process gets it


def _not_found(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    markers = ("No such file", "Not found", "NotFound", " 404 ")
    return isinstance(exc, FileNotFoundError) or any(s in text for s in markers)


def described(ref: str, name: str = "") -> str:
    """How messages name a file: the reference as the user wrote it (`name`), and the path it
    resolved to when that differs (a reference relative to the manifest's folder)."""
    return f"{name} (resolved to {ref})" if name and name != ref else ref


DEFAULT_MAX_INPUT_BYTES = 4 << 30  # --max_input_bytes: a multi-frame DICOM or a NIfTI volume can be a few GB

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _too_big(ref: str, name: str, size: int, limit: int) -> ItemError:
    return ItemError("read", f"{described(ref, name)} is {size:,} bytes, above --max_input_bytes ({limit:,}); not read")


def _open_local(path: str, name: str, limit: int) -> BinaryIO:
    """A local regular file opened for reading, refused before any byte is read when it is anything else
    (opening a FIFO without O_NONBLOCK would wait for a writer forever) or larger than `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ItemError("read", f"cannot read {described(path, name)}: file not found") from None
    except OSError as exc:
        raise ItemError("read", f"cannot read {described(path, name)}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise ItemError("read", f"{described(path, name)} is {kind}, not a regular file; not read")
        if st.st_size > limit:
            raise _too_big(path, name, st.st_size, limit)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_input(ref: str, name: str = "", limit: int = DEFAULT_MAX_INPUT_BYTES) -> BinaryIO:
    """A local path or gs:// URI opened for reading, after the checks read_bytes makes (regular file, size)."""
    return _open_sized(ref, name, limit)[0]


def _open_sized(ref: str, name: str, limit: int) -> tuple[BinaryIO, int]:
    """open_input, also returning the size the file declares (bytes)."""
    if "://" not in ref:
        fh = _open_local(ref, name, limit)
        return fh, os.fstat(fh.fileno()).st_size
    try:  # the exact object (FileSystems.match would read [, * and ? in a name as a pattern)
        size = FileSystems.get_filesystem(ref).metadata(ref).size_in_bytes
    except Exception as exc:
        reason = "file not found" if _not_found(exc) else str(exc)
        raise ItemError("read", f"cannot read {described(ref, name)}: {reason}") from None
    if size > limit:
        raise _too_big(ref, name, size, limit)
    try:
        return FileSystems.open(ref, compression_type="uncompressed"), size
    except Exception as exc:  # Beam wraps OSError in BeamIOError
        reason = "file not found" if _not_found(exc) else str(exc)
        raise ItemError("read", f"cannot read {described(ref, name)}: {reason}") from None


def read_bytes(ref: str, name: str = "", limit: int = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """Whole file at a local path, gs:// URI or DICOMweb instance URL, at most `limit` bytes; a missing,
    unreadable, non-regular or oversized file is ItemError('read') (checked before reading; the read
    itself stops at the limit, so a file growing while read cannot exceed it).

    `name` is the reference as the user wrote it (when `ref` is its resolved form): messages show
    both, so a relative reference that resolved somewhere unexpected says where.
    """
    with stage("read"):
        web = parse_ref(ref)
        if web is not None:
            if not web.instance:
                raise ItemError("read", f"{described(ref, name)} is a DICOMweb study/series, not an instance")
            return client_for(web.base).retrieve_instance(web, limit)
        fh, declared = _open_sized(ref, name, limit)
        with fh:
            try:
                data = _read_at_most(fh, limit, declared)
            except Exception as exc:  # Beam wraps OSError in BeamIOError
                raise ItemError("read", f"cannot read {described(ref, name)}: {exc}") from None
        if len(data) > limit:
            raise _too_big(ref, name, len(data), limit)
        return data


def _read_at_most(fh: BinaryIO, limit: int, declared: int) -> bytes:
    """The rest of a stream, stopping after limit + 1 bytes. One read of the declared size + 1 (a read of
    limit + 1 would allocate the whole limit up front), then 1 MiB chunks if the stream yields more than it
    declared (/proc files declare 0; a file may grow)."""
    data = fh.read(min(limit, declared) + 1)
    if len(data) <= declared:
        return data  # end of the stream
    chunks, size = [data], len(data)
    while size <= limit:
        chunk = fh.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class LocalFile:
    """A local path for readers that need one (OpenSlide); remote files are copied to a temp file."""

    def __init__(self, path: str, temporary: bool):
        self.path, self._temporary = path, temporary

    def cleanup(self) -> None:
        """Delete the temporary copy (a file or a folder), if any."""
        if self._temporary and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        elif self._temporary and os.path.exists(self.path):
            os.remove(self.path)


class RemoteStreams:
    """Seekable streams over every object under a gs:// prefix (Beam's GCS reader fetches the ranges
    read, in buffered chunks, not whole objects); `cleanup` closes them. `path` is the prefix."""

    def __init__(self, prefix: str):
        matched = FileSystems.match([prefix.rstrip("/") + "/**"])[0].metadata_list
        self.path = prefix
        self.streams = [
            FileSystems.open(m.path, compression_type="uncompressed")
            for m in sorted(matched, key=lambda m: m.path)
            if not m.path.endswith("/")
        ]
        if not self.streams:
            raise ItemError("read", f"cannot read {prefix}: file not found")

    def cleanup(self) -> None:
        """Close the streams."""
        for stream in self.streams:
            stream.close()


def localize_file(ref: str) -> LocalFile:
    """The file as a local path (gs:// copied in 8 MiB chunks; OpenSlide cannot do ranged reads on GCS).
    A local path must be a folder (a DICOM WSI series) or a regular file (readers given a FIFO would wait
    forever)."""
    if "://" not in ref:
        if not os.path.isdir(ref):
            _open_local(ref, "", 1 << 62).close()
        return LocalFile(ref, False)
    suffix = os.path.splitext(ref)[1]
    fd, local = tempfile.mkstemp(prefix="medprep-slide-", suffix=suffix)
    try:
        with FileSystems.open(ref, compression_type="uncompressed") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    except Exception as exc:
        os.remove(local)
        raise ItemError("read", f"cannot read {ref}: {'file not found' if _not_found(exc) else exc}") from None
    return LocalFile(local, True)


def read_head(ref: str, size: int = 512) -> bytes:
    """The first `size` bytes of a file (format sniffing without reading it all); only regular files."""
    with open_input(ref, "", 1 << 62) as fh:
        try:
            return fh.read(size)
        except Exception as exc:
            raise ItemError("read", f"cannot read {ref}: {exc}") from None


def exists(ref: str) -> bool:
    """True if the file exists."""
    return FileSystems.exists(ref)
