"""Stored image bytes -> the float array the Gemma 3 image processor feeds the model."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_model_input(image: bytes | Image.Image, size: int = 896, channels_first: bool = False) -> np.ndarray:
    """Encoded image -> float32 size×size×3 in [-1, 1]: BILINEAR resize, x/255, (x-0.5)/0.5."""
    img = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if channels_first else x
