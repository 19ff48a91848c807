"""Local paths and gs:// URIs through Beam's FileSystems."""

from __future__ import annotations

import os
import shutil
import tempfile

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


def read_bytes(ref: str, name: str = "") -> bytes:
    """Whole file at a local path or gs:// URI; a missing/unreadable file is ItemError('read').

    `name` is the reference as the user wrote it (when `ref` is its resolved form): messages show
    both, so a relative reference that resolved somewhere unexpected says where.
    """
    with stage("read"):
        web = parse_ref(ref)
        if web is not None:
            if not web.instance:
                raise ItemError("read", f"{described(ref, name)} is a DICOMweb study/series, not an instance")
            return client_for(web.base).retrieve_instance(web)
        try:
            with FileSystems.open(ref, compression_type="uncompressed") as fh:
                return fh.read()
        except Exception as exc:  # Beam wraps OSError in BeamIOError
            reason = "file not found" if _not_found(exc) else str(exc)
            raise ItemError("read", f"cannot read {described(ref, name)}: {reason}") from None


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
    """The file as a local path (gs:// copied in 8 MiB chunks; OpenSlide cannot do ranged reads on GCS)."""
    if "://" not in ref:
        if not os.path.exists(ref):
            raise ItemError("read", f"cannot read {ref}: file not found")
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
    """The first `size` bytes of a file (format sniffing without reading it all)."""
    try:
        with FileSystems.open(ref, compression_type="uncompressed") as fh:
            return fh.read(size)
    except Exception as exc:
        raise ItemError("read", f"cannot read {ref}: {exc}") from None


def exists(ref: str) -> bool:
    """True if the file exists."""
    return FileSystems.exists(ref)
