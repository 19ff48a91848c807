"""Slide readers behind one small interface: levels, their resolution, regions, a thumbnail.

Slide files go to the first reader in FILE_READERS that takes them: tifffile for the TIFF family
OpenSlide calls aperio or generic-tiff (transforms/slide_tiff.py, same pixels, ~4x faster), then OpenSlide
for everything else (NDPI, MRXS, YCbCr JPEG 2000 SVS…). DICOM WSI folders and DICOMweb series go to wsidicom.
Resolution comes from the slide's metadata (Aperio MPP / openslide.mpp-x, else the TIFF resolution tags),
else `assume_mpp`; a slide with none has mpp None (callers fail clearly). Out-of-slide areas are white (glass).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from medprep.transforms.dicomweb_ref import parse_ref
from medprep.transforms.errors import ItemError
from medprep.transforms.streamed_resize import streamed_resize

_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0}


@runtime_checkable
class SlideReader(Protocol):
    """What the slide steps need from an open slide (OpenSlideReader, DicomWsiReader; a new backend
    implements these). Levels are indexed from 0, the full resolution; regions are addressed in level-0
    pixels. Unreadable input is ItemError('decode') (a DICOMweb series that cannot be opened: 'read')."""

    dimensions: list[tuple[int, int]]  # (width, height) of each level, in its own pixels
    downsamples: list[float]  # level-0 pixels per level pixel (1.0 for level 0)
    mpps: list[float | None]  # µm per pixel of each level; None when the slide declares none
    mpp_source: str  # 'metadata', 'manifest' (override), 'assumed' or 'none'

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level`, top-left at level-0 (x0, y0); outside the slide is white."""
        ...

    def thumbnail(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """(RGB thumbnail at about target_mpp µm/px, its downsample from level 0)."""
        ...

    def close(self) -> None:
        """Release the slide's files or connections."""
        ...


def strip_rows(tile_height: int, strip: int = 1024) -> int:
    """Rows per thumbnail strip: `strip` rounded down to whole tile rows (each tile is decoded once), at least one."""
    return max(tile_height, strip // tile_height * tile_height) if tile_height > 0 else strip


THUMB_BLOCK = 256  # pixels a side of the blocks a thumbnail is made from (rounded to whole tiles; 256 ran
# 1.7x faster than 512 on a 32,768 × 2,048 level: the products stay in cache)


def level_thumbnail(
    reader: SlideReader, target_mpp: float, max_side: int = 4096, block: int = THUMB_BLOCK
) -> tuple[np.ndarray, float]:
    """(RGB thumbnail at about target_mpp µm/px, its downsample from level 0), the same for every reader:
    the coarsest level at least that fine (the only one read, once), BILINEAR-resized.

    Byte for byte Pillow's resize of the whole level, made from blocks of about `block` pixels a side cut at
    tile borders, each read once and reduced as read (transforms/streamed_resize.py): memory is a block, one
    band of horizontally reduced rows and the thumbnail, however large the level (a one-level slide's level 0
    included). A level whose downsample is not a whole number (a pyramid level, smaller) is read in strips
    of its full width and about 1,024 rows, as before: OpenSlide paints a read that starts between level
    pixels at the sub-pixel offset, so fewer reads keep its thumbnail equal to the tifffile reader's."""
    w0, h0 = reader.dimensions[0]
    factor = (target_mpp / reader.mpps[0]) if reader.mpps[0] else max(w0, h0) / 1024.0
    factor = max(factor, max(w0, h0) / max_side, 1.0)
    width, height = max(1, int(round(w0 / factor))), max(1, int(round(h0 / factor)))
    usable = [i for i, d in enumerate(reader.downsamples) if d <= factor] or [0]
    level = max(usable, key=lambda i: reader.downsamples[i])
    lw, lh = reader.dimensions[level]
    ds = reader.downsamples[level]
    heights: list[int] = getattr(reader, "tile_heights", [])
    widths: list[int] = getattr(reader, "tile_widths", [])
    whole = float(ds).is_integer()  # else full-width strips of ~1,024 rows, as before (OpenSlide parity)
    rows = strip_rows(heights[level] if level < len(heights) else 0, block if whole else 1024)
    cols = strip_rows(widths[level] if level < len(widths) else 0, block) if whole else lw

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return reader.read(level, int(round(x * ds)), int(round(y * ds)), w, h)

    return streamed_resize(read, (lw, lh), (width, height), (cols, rows)), w0 / width


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
        self.dimensions = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.downsamples = [float(d) for d in self._slide.level_downsamples]
        self.mpps = [mpp0 * d if mpp0 else None for d in self.downsamples]
        self.tile_heights = [
            int(props.get(f"openslide.level[{i}].tile-height", 0)) for i in range(len(self.dimensions))
        ]
        self.tile_widths = [int(props.get(f"openslide.level[{i}].tile-width", 0)) for i in range(len(self.dimensions))]

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level`, top-left at level-0 (x0, y0)."""
        import openslide

        try:
            region = self._slide.read_region((int(x0), int(y0)), level, (int(width), int(height)))
        except openslide.OpenSlideError as exc:
            raise ItemError("decode", f"cannot read region at ({x0}, {y0}) level {level}: {exc}") from None
        if region.getchannel("A").getextrema()[0] == 255:  # fully opaque (inside the slide): no compositing
            return np.asarray(region.convert("RGB"))
        white = Image.new("RGBA", region.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, region).convert("RGB"))

    def thumbnail(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """(RGB thumbnail at about target_mpp, its downsample from level 0); see level_thumbnail."""
        return level_thumbnail(self, target_mpp, max_side)

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._slide.close()


class DicomWsiReader:
    """A DICOM WSI (a folder of VL Whole Slide Microscopy instances) through wsidicom.

    Levels are the pyramid levels present (missing ones are simply absent); resolution comes
    from each level's PixelSpacing. Regions are addressed in level-0 pixels, as with OpenSlide.
    """

    def __init__(
        self, folder: str = "", assume_mpp: float | None = None, override_mpp: float | None = None, wsi: Any = None
    ):
        """`folder`: local DICOM files; or `wsi`: an already opened wsidicom.WsiDicom (e.g. over DICOMweb)."""
        import wsidicom

        try:
            self._wsi = wsi if wsi is not None else wsidicom.WsiDicom.open(folder)
        except Exception as exc:  # wsidicom raises its own errors for incomplete or foreign files
            raise ItemError("decode", f"not a DICOM WSI wsidicom can open: {type(exc).__name__}: {exc}") from None
        self.vendor = "dicom"
        levels = sorted(self._wsi.levels, key=lambda lv: lv.level)
        self._levels = [lv.level for lv in levels]
        self.dimensions = [(lv.size.width, lv.size.height) for lv in levels]
        w0 = self.dimensions[0][0]
        self.downsamples = [w0 / w for w, _ in self.dimensions]
        spacing = [getattr(lv, "mpp", None) for lv in levels]
        mpp0 = spacing[0].width if spacing[0] is not None else None
        if override_mpp:
            mpp0, self.mpp_source = override_mpp, "manifest"
        else:
            self.mpp_source = "metadata" if mpp0 else ("assumed" if assume_mpp else "none")
            mpp0 = mpp0 or assume_mpp
        self.mpps = [mpp0 * d if mpp0 else None for d in self.downsamples]

    def read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level` (index into the present levels), top-left at level-0 (x0, y0)."""
        ds = self.downsamples[level]
        lw, lh = self.dimensions[level]
        x, y = int(round(x0 / ds)), int(round(y0 / ds))
        w, h = min(width, lw - x), min(height, lh - y)
        canvas = np.full((height, width, 3), 255, np.uint8)
        if w > 0 and h > 0:
            try:
                region = self._wsi.read_region((x, y), self._levels[level], (w, h)).convert("RGB")
            except Exception as exc:
                raise ItemError("decode", f"cannot read region at ({x0}, {y0}) level {level}: {exc}") from None
            canvas[:h, :w] = np.asarray(region)
        return canvas

    def thumbnail(self, target_mpp: float, max_side: int = 4096) -> tuple[np.ndarray, float]:
        """(RGB thumbnail at about target_mpp, its downsample from level 0); see level_thumbnail."""
        return level_thumbnail(self, target_mpp, max_side)

    def close(self) -> None:
        """Release the files."""
        self._wsi.close()


def open_web_wsi(
    url: str, client: Any = None, assume_mpp: float | None = None, override_mpp: float | None = None
) -> SlideReader:
    """A DICOM WSI series on a DICOMweb server; `client` a wsidicom.WsiDicomWebClient (default: unauthenticated)."""
    import warnings

    import wsidicom

    ref = parse_ref(url)
    if ref is None or not ref.is_series:
        raise ItemError("read", f"not a DICOMweb series URL: {url}")
    base, study, series = ref.base, ref.study, ref.series
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = client or wsidicom.WsiDicomWebClient.create_client(base)
            wsi = wsidicom.WsiDicom.open_web(client, study, series)
    except Exception as exc:
        raise ItemError("read", f"cannot open the DICOM WSI at {url}: {type(exc).__name__}: {exc}") from None
    return DicomWsiReader(assume_mpp=assume_mpp, override_mpp=override_mpp, wsi=wsi)


def open_wsi_streams(
    streams: Sequence[BinaryIO], assume_mpp: float | None = None, override_mpp: float | None = None
) -> SlideReader:
    """A DICOM WSI from seekable binary streams (e.g. objects in a bucket): only the headers, offset
    tables and the frames a read needs are read from them."""
    import wsidicom

    try:
        wsi = wsidicom.WsiDicom.open_streams(streams)
    except Exception as exc:
        raise ItemError("decode", f"not a DICOM WSI wsidicom can open: {type(exc).__name__}: {exc}") from None
    return DicomWsiReader(assume_mpp=assume_mpp, override_mpp=override_mpp, wsi=wsi)


FileReader = Callable[[str, "float | None", "float | None"], "SlideReader | None"]

# Readers of slide files, tried in order: "module:function" taking (path, assume_mpp, override_mpp) and returning a
# SlideReader, or None when the file is not theirs. A new backend is a module plus a line; OpenSlide comes last.
FILE_READERS: list[str] = [
    "medprep.transforms.slide_tiff:open_tiff_slide",
    "medprep.transforms.slide_reader:OpenSlideReader",
]


def file_reader(entry: str) -> FileReader:
    """The opener a FILE_READERS entry names."""
    module, name = entry.split(":")
    opener: FileReader = getattr(importlib.import_module(module), name)
    return opener


READER_NAMES = {
    "tifffile": "medprep.transforms.slide_tiff:open_tiff_slide",
    "openslide": "medprep.transforms.slide_reader:OpenSlideReader",
}
READERS_ENV = "MEDPREP_SLIDE_READERS"  # e.g. "openslide": OpenSlide for every slide file (a fallback switch)


def file_readers() -> list[str]:
    """FILE_READERS, or the readers $MEDPREP_SLIDE_READERS names, comma-separated (of READER_NAMES), in order."""
    names = [n.strip() for n in os.environ.get(READERS_ENV, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in READER_NAMES]
    if unknown:
        raise ValueError(f"${READERS_ENV}: unknown slide reader {unknown[0]!r} (known: {', '.join(READER_NAMES)})")
    return [READER_NAMES[n] for n in names] or FILE_READERS


def open_slide_file(path: str, assume_mpp: float | None = None, override_mpp: float | None = None) -> SlideReader:
    """A slide file through the first reader of file_readers() that takes it."""
    for entry in file_readers():
        reader = file_reader(entry)(path, assume_mpp, override_mpp)
        if reader is not None:
            return reader
    raise ItemError("decode", f"no slide reader takes {path}")


def open_slide(path: str, assume_mpp: float | None = None, override_mpp: float | None = None) -> SlideReader:
    """A reader for a slide file (FILE_READERS: tifffile for SVS / pyramidal TIFF, else OpenSlide), a DICOM WSI
    folder, or a DICOMweb WSI series URL (wsidicom)."""
    web = parse_ref(path)
    if web is not None and web.is_series:
        return open_web_wsi(path, None, assume_mpp, override_mpp)
    if os.path.isdir(path):
        return DicomWsiReader(path, assume_mpp, override_mpp)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return DicomWsiReader(os.path.dirname(path) or ".", assume_mpp, override_mpp)
    return open_slide_file(path, assume_mpp, override_mpp)
