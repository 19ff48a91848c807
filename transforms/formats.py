"""Identify an encoded file's format from its first bytes (and, as a hint, its name)."""

from __future__ import annotations

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"RIFF", "webp"),  # checked further below
    (b"\x1f\x8b", "gzip"),
)

PHOTO_FORMATS = frozenset({"png", "jpeg", "tiff", "gif", "bmp", "webp"})
DEFAULT_MAX_PIXELS = 200_000_000  # ~ a 14k x 14k image; a file claiming more is refused before decoding


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM dataset without preamble starts with a group 0x0002 or 0x0008 tag."""
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def detect_format(data: bytes, name: str = "") -> str:
    """Format of encoded bytes: 'dicom', 'png', 'jpeg', 'tiff', 'nifti', … or 'unknown'."""
    head = bytes(data[:512])
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    lower = name.lower()
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if lower.endswith(".mha") and b"ObjectType" in head[:200]:
        return "mha"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            if fmt == "webp" and head[8:12] != b"WEBP":
                continue
            if fmt == "gzip":
                return "nifti" if lower.endswith(".nii.gz") else "gzip"
            return fmt
    if lower.endswith((".dcm", ".dicom")) or _looks_like_raw_dicom(head):
        return "dicom"
    return "unknown"
