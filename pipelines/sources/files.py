"""Local paths and gs:// URIs through Beam's FileSystems."""
from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from transforms.errors import ItemError


def read_bytes(ref: str) -> bytes:
    """Whole file at a local path or gs:// URI; a missing/unreadable file is ItemError('read')."""
    try:
        with FileSystems.open(ref, compression_type="uncompressed") as fh:
            return fh.read()
    except Exception as exc:  # Beam wraps OSError in BeamIOError
        reason = str(exc)
        if isinstance(exc, FileNotFoundError) or "No such file" in reason or "Not found" in reason:
            reason = "file not found"
        raise ItemError("read", f"cannot read {ref}: {reason}") from None


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
