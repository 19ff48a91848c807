"""Photo decode (PNG, JPEG, TIFF, …) -> RGB uint8 (H, W, 3), EXIF orientation applied.

Palette and alpha images are composited on black (the pad colour); CMYK and YCbCr are
converted by Pillow; 16-bit greyscale is scaled to 8 bits by v / 257, rounded.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from medprep.transforms.errors import ItemError
from medprep.transforms.formats import DEFAULT_MAX_PIXELS


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            grey = np.zeros(values.shape, np.uint8)
        else:
            grey = np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))
    if mode == "1":
        img = img.convert("L")
    return np.asarray(img.convert("RGB"))


def decode_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict[str, Any]]:
    """Encoded photo bytes -> (RGB uint8 (H, W, 3), info with format, size and orientation); more than
    max_pixels pixels is refused (Pillow's own decompression-bomb limit is set from it, so it never refuses
    first)."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow errors above 2x this, warns above 1x; our check below decides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our max_pixels decides
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = (img.format or "unknown").lower()
            width, height = img.size
            if width * height > max_pixels:
                raise ItemError("decode", f"image is {width}x{height} pixels, above the limit of {max_pixels}")
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:
        raise ItemError("decode", f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… on bad input
        raise ItemError("decode", f"cannot decode image: {type(exc).__name__}: {exc}") from None
    info = {
        "format": fmt,
        "source_mode": img.mode,
        "exif_orientation": int(orientation),
        "rows": int(rgb.shape[0]),
        "columns": int(rgb.shape[1]),
    }
    return np.ascontiguousarray(rgb), info
