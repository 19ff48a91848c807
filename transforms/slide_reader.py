"""Slide readers behind one small interface: levels, their resolution, regions, a thumbnail.

OpenSlide (SVS, NDPI, MRXS, generic tiled TIFF…). Resolution comes from openslide.mpp-x,
else the TIFF resolution tags, else `assume_mpp`; a slide with none has mpp None (callers fail
clearly). Transparent or out-of-slide areas are composited on white (glass).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from transforms.errors import ItemError

_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0}


class OpenSlideReader:
    """One open slide; not shared across processes (open per worker, close when done)."""

    def __init__(self, path: str, assume_mpp: float | None = None, override_mpp: float | None = None):
        import openslide

        try:
            self._slide = openslide.OpenSlide(path)
        except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError) as exc:
            raise ItemError("decode", f"not a slide OpenSlide can read: {exc}") from None
        props = self._slide.properties
        self.vendor = props.get("openslide.vendor", "")
        mpp0 = None
        try:
            if props.get("openslide.mpp-x"):
                mpp0 = float(props["openslide.mpp-x"])
            elif props.get("tiff.XResolution") and props.get("tiff.ResolutionUnit") in _UNIT_UM:
                mpp0 = _UNIT_UM[props["tiff.ResolutionUnit"]] / float(props["tiff.XResolution"])
        except (TypeError, ValueError, ZeroDivisionError):
            mpp0 = None
        if override_mpp:
            mpp0, self.mpp_source = override_mpp, "manifest"
        else:
            self.mpp_source = "metadata" if mpp0 else ("assumed" if assume_mpp else "none")
            mpp0 = mpp0 or assume_mpp
        self.dimensions = [tuple(d) for d in self._slide.level_dimensions]
        self.downsamples = [float(d) for d in self._slide.level_downsamples]
        self.mpps = [mpp0 * d if mpp0 else None for d in self.downsamples]

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level`, top-left at level-0 (x0, y0)."""
        import openslide

        try:
            region = self._slide.read_region((int(x0), int(y0)), level, (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            raise ItemError("decode", f"cannot read region at ({x0}, {y0}) level {level}: {exc}") from None
        if region.getextrema()[3][0] == 255:   # fully opaque (inside the slide): nothing to composite
            return np.asarray(region.convert("RGB"))
        white = Image.new("RGBA", region.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, region).convert("RGB"))

    def thumbnail(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """(RGB thumbnail at about target_mpp, its downsample from level 0)."""
        w0, h0 = self.dimensions[0]
        factor = (target_mpp / self.mpps[0]) if self.mpps[0] else max(w0, h0) / 1024.0
        factor = max(factor, max(w0, h0) / max_side, 1.0)
        size = (max(1, int(round(w0 / factor))), max(1, int(round(h0 / factor))))
        thumb = self._slide.get_thumbnail(size).convert("RGB")
        return np.asarray(thumb), w0 / thumb.width

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._slide.close()
