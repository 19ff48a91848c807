"""Encode a PIL RGB image to PNG (lossless, default) or JPEG bytes, deterministically."""
from __future__ import annotations

import io

from PIL import Image

IMAGE_FORMATS = ("png", "jpeg")
# Level 1: 3-5x faster than zlib's default 6 for ~20-30% larger files (benchmarks/README.md).
DEFAULT_PNG_LEVEL = 1
DEFAULT_JPEG_QUALITY = 95


def encode_image(img: Image.Image, image_format: str = "png", *, png_level: int = DEFAULT_PNG_LEVEL,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """PIL image -> encoded bytes; png_level 0-9 (zlib), jpeg_quality 1-100 (4:4:4 at >= 90)."""
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    elif image_format == "jpeg":
        subsampling = 0 if jpeg_quality >= 90 else 2
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=subsampling, optimize=False)
    else:
        raise ValueError(f"unsupported image format {image_format!r}; choose one of {IMAGE_FORMATS}")
    return buf.getvalue()


def file_extension(image_format: str) -> str:
    """'png' -> '.png', 'jpeg' -> '.jpg'."""
    return {"png": ".png", "jpeg": ".jpg"}[image_format]
