"""The TIFF family of slides (Aperio SVS, generic tiled pyramidal TIFF) read with tifffile, tile by tile.

Faster than OpenSlide's read_region (no cairo compositing, no premultiplied RGBA round trip) and equal
to it pixel for pixel where both decode the same codec with libjpeg-turbo: the pyramid, the level
downsamples ((w0/w + h0/h) / 2), the resolution (Aperio `MPP = `, else the TIFF resolution tags) and the
associated images follow OpenSlide's aperio and generic-tiff rules. Only files OpenSlide itself detects as
`aperio` or `generic-tiff`, whose levels are tiled 8-bit RGB/YCbCr in a codec listed in CODECS, are taken
(`open_tiff_slide` answers None for the rest, which OpenSlide then reads: NDPI, MRXS, YCbCr JPEG 2000 SVS…).

One difference by design: a level-0 coordinate that is not a whole pixel of the level read (x0 / downsample
fractional) is snapped to the nearest level pixel, where OpenSlide paints its tiles at the sub-pixel offset
(cairo's bilinear filter: a slight blur, with seams at tile borders). Level 0, and every patch whose grid
step is a multiple of the level's downsample, are read identically.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Any

import numpy as np

from medprep.transforms.errors import ItemError

# TIFF Compression values read here (each checked against OpenSlide in tests/transforms/test_slide_tiff.py):
# none, LZW, JPEG, Adobe deflate, deflate, Aperio JPEG 2000 RGB (OpenJPEG on both sides). Others stay with
# OpenSlide, e.g. Aperio's JPEG 2000 YCbCr (33003), whose colour conversion is OpenSlide's own.
CODECS = (1, 5, 7, 8, 32946, 33005)
VENDORS = ("aperio", "generic-tiff")  # OpenSlide's names for the formats this reader takes
_UNIT_UM = {2: 25400.0, 3: 1e4}  # TIFF ResolutionUnit inch, centimetre -> µm
_RGB, _YCBCR = 2, 6  # TIFF PhotometricInterpretation


def aperio_mpp(description: str) -> float | None:
    """µm per level-0 pixel from an Aperio ImageDescription's `|MPP = 0.499|` field; None when absent or bad."""
    match = re.search(r"\|\s*MPP\s*=\s*([^|\r\n]+)", description)
    if match is None:
        return None
    try:
        mpp = float(match.group(1).strip())
    except ValueError:
        return None
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def resolution_mpp(x_resolution: Any, unit: int) -> float | None:
    """µm per pixel from a TIFF XResolution (pixels per unit; a number or a (num, den) pair) and ResolutionUnit
    (2 inch, 3 centimetre); None without a physical unit or with a zero resolution."""
    if unit not in _UNIT_UM or x_resolution is None:
        return None
    num, den = x_resolution if isinstance(x_resolution, tuple) else (x_resolution, 1)
    if not num or not den:
        return None
    return _UNIT_UM[unit] * float(den) / float(num)


def level_downsamples(dimensions: list[tuple[int, int]]) -> list[float]:
    """Level-0 pixels per level pixel, as OpenSlide computes them: the mean of the width and height ratios."""
    w0, h0 = dimensions[0]
    return [(w0 / w + h0 / h) / 2.0 for w, h in dimensions]


def tile_span(start: int, length: int, tile: int, extent: int) -> range:
    """Indices of the tiles (side `tile`) that pixels [start, start + length) of a level `extent` wide touch."""
    first = max(start, 0) // tile
    last = min(start + length, extent)
    return range(first, -(-last // tile)) if last > max(start, 0) else range(0)


def _aperio_name(page: Any, index: int, gt450: bool) -> str | None:
    """The associated image an untiled Aperio page holds, as OpenSlide 4 names it: page 1 is the thumbnail (GT450
    files: 5 the label, 6 the macro); other reduced-image pages (NewSubfileType bit 0) take the first word of
    their description's second line ('label', 'macro')."""
    fixed = {1: "thumbnail", **({5: "label", 6: "macro"} if gt450 else {})}
    if index in fixed:
        return fixed[index]
    if not int(page.subfiletype) & 1:
        return None
    lines = re.split(r"[\r\n]", page.description or "")
    word = lines[1].split(" ")[0] if len(lines) > 1 else ""
    return word or None


def pyramid_pages(pages: list[Any], vendor: str) -> list[Any]:
    """The pages that are pyramid levels, in OpenSlide's order: Aperio's tiled pages as stored; generic TIFF's
    first page and the tiled reduced-resolution ones (NewSubfileType bit 0), widest first."""
    if vendor == "aperio":
        return [p for p in pages if p.is_tiled]
    levels = [p for i, p in enumerate(pages) if p.is_tiled and (i == 0 or int(p.subfiletype) & 1)]
    return sorted(levels, key=lambda p: -int(p.imagewidth))


def missing_tiles(pages: list[Any]) -> list[set[int]]:
    """Per level, the tiles OpenSlide leaves empty: zero-length ones (an Aperio encoder bug) and, on each next
    level, the tile that was built from a missing one."""
    out: list[set[int]] = []
    for level, page in enumerate(pages):
        missing = {int(i) for i in np.flatnonzero(np.asarray(page.databytecounts) == 0)}
        if level:
            prev = pages[level - 1]
            across, down = _grid(prev)
            next_across, next_down = _grid(page)
            cx, cy = round(across / next_across), round(down / next_down)
            missing |= {(t // across) // cy * next_across + (t % across) // cx for t in out[-1]}
        out.append(missing)
    return out


def _grid(page: Any) -> tuple[int, int]:
    """(tiles across, tiles down) of a tiled page."""
    return -(-int(page.imagewidth) // int(page.tilewidth)), -(-int(page.imagelength) // int(page.tilelength))


def _supported(page: Any) -> bool:
    """A pyramid level this reader decodes: tiled, 8-bit, 3 samples interleaved, RGB/YCbCr, a codec in CODECS."""
    return bool(
        page.is_tiled
        and page.bitspersample == 8
        and page.samplesperpixel == 3
        and page.planarconfig == 1
        and int(page.photometric) in (_RGB, _YCBCR)
        and int(page.compression) in CODECS
        and page.imagedepth == 1
    )


class TiffSlideReader:
    """One open TIFF-family slide (SVS, generic pyramidal TIFF); not shared across processes.

    `decoded` counts tiles decoded per level (what a read costs; tests hold the planning bound with it).
    """

    def __init__(self, path: str, vendor: str, assume_mpp: float | None = None, override_mpp: float | None = None):
        import tifffile

        self.vendor = vendor
        try:
            self._tif = tifffile.TiffFile(path)
            pages: list[Any] = list(self._tif.pages)  # TiffPage each (frames are not used)
        except Exception as exc:  # tifffile raises its own errors and OSError/ValueError on bad files
            raise ItemError("decode", f"not a TIFF slide tifffile can read: {type(exc).__name__}: {exc}") from None
        self._fd = os.open(path, os.O_RDONLY)
        self._levels = pyramid_pages(pages, vendor)
        self._missing = missing_tiles(self._levels)
        self.associated: dict[str, int] = {}  # name -> page index
        if vendor == "aperio":
            gt450 = (pages[0].description or "").startswith("Aperio Leica Biosystems GT450")
            for i, page in enumerate(pages):
                name = None if page.is_tiled else _aperio_name(page, i, gt450)
                if name and name not in self.associated:
                    self.associated[name] = i
        self.dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._levels]
        self.downsamples = level_downsamples(self.dimensions) if self._levels else []
        self.tile_heights = [int(p.tilelength) for p in self._levels]
        self.tile_widths = [int(p.tilewidth) for p in self._levels]
        mpp0 = self._declared_mpp(pages[0]) if pages else None
        if override_mpp:
            mpp0, self.mpp_source = override_mpp, "manifest"
        else:
            self.mpp_source = "metadata" if mpp0 else ("assumed" if assume_mpp else "none")
            mpp0 = mpp0 or assume_mpp
        self.mpps: list[float | None] = [mpp0 * d if mpp0 else None for d in self.downsamples]
        self.decoded: Counter[int] = Counter()

    def _declared_mpp(self, page0: Any) -> float | None:
        """Aperio's MPP field for SVS, else the first page's XResolution with a physical ResolutionUnit."""
        if self.vendor == "aperio":
            mpp = aperio_mpp(page0.description or "")
            if mpp:
                return mpp
        tags = page0.tags
        unit = tags.get("ResolutionUnit")
        xres = tags.get("XResolution")
        return resolution_mpp(xres.value if xres else None, int(unit.value) if unit else 1)

    @property
    def supported(self) -> bool:
        """Whether every pyramid level is one this reader decodes (else the slide goes to OpenSlide)."""
        return bool(self._levels) and all(_supported(p) for p in self._levels)

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        """Tile `index` (row-major) of `level` as decoded, (tile height, tile width, 3) uint8; None when absent."""
        page = self._levels[level]
        if index in self._missing[level]:
            return None
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise ItemError("decode", f"tile {index} of level {level} is cut short ({len(data)} of {count} bytes)")
        try:
            pixels = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:  # the codecs raise their own error types
            raise ItemError("decode", f"cannot decode tile {index} of level {level}: {exc}") from None
        self.decoded[level] += 1
        tile: np.ndarray = np.asarray(pixels).reshape(pixels.shape[-3:])
        return tile

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level`, top-left at level-0 (x0, y0) snapped to the nearest level
        pixel; outside the slide is white."""
        page = self._levels[level]
        lw, lh = self.dimensions[level]
        ds = self.downsamples[level]
        x, y = int(round(x0 / ds)), int(round(y0 / ds))
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = -(-lw // tw)
        out = np.full((height, width, 3), 255, np.uint8)
        for ty in tile_span(y, height, th, lh):
            for tx in tile_span(x, width, tw, lw):
                tile = self._tile(level, ty * across + tx)
                if tile is None:
                    continue
                left, top = tx * tw, ty * th  # the tile's origin in level pixels
                sx0, sy0 = max(x, left), max(y, top)
                sx1, sy1 = min(x + width, left + tw, lw), min(y + height, top + th, lh)
                part = tile[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = part
        return out

    def thumbnail(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """(RGB thumbnail at about target_mpp, its downsample from level 0); see slide_reader.level_thumbnail."""
        from medprep.transforms.slide_reader import level_thumbnail

        return level_thumbnail(self, target_mpp, max_side)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (Aperio: 'thumbnail', 'label', 'macro') as RGB uint8 (height, width, 3)."""
        if name not in self.associated:
            raise ItemError("decode", f"the slide has no associated image {name!r}")
        try:
            pixels = np.asarray(self._tif.pages[self.associated[name]].asarray())
        except Exception as exc:
            raise ItemError("decode", f"cannot decode the associated image {name!r}: {exc}") from None
        return pixels[..., :3] if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)

    def close(self) -> None:
        """Release the file."""
        os.close(self._fd)
        self._tif.close()


def open_tiff_slide(
    path: str, assume_mpp: float | None = None, override_mpp: float | None = None
) -> TiffSlideReader | None:
    """A TiffSlideReader when OpenSlide detects the file as aperio or generic-tiff and every level is supported;
    None otherwise (the caller falls back to OpenSlide)."""
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(path)
    except Exception:  # unreadable file: let OpenSlide report it in its own words
        return None
    if vendor not in VENDORS:
        return None
    try:
        reader = TiffSlideReader(path, vendor, assume_mpp, override_mpp)
    except ItemError:
        return None
    if not reader.supported:
        reader.close()
        return None
    return reader
