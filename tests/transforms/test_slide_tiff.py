"""The tifffile slide reader against OpenSlide: geometry, resolution, associated images, pixels of regions and
whole patches (every level, partial edge tiles, regions past the image), which reader open_slide picks, and
what planning reads.

tests/data/aperio_cmu1_16px.svs is a real Aperio file (Aperio Image Library v12.2.2: a 16x16 crop of
OpenSlide's CMU-1 test slide, JPEG 4:2:0 YCbCr tiles of 64x64 labelled RGB, with a thumbnail page), the
`small.svs` fixture of the openslide-python 1.4.7 source distribution on PyPI.
"""

import io
import os

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from medprep.samples import synthetic_slide_rgb, write_svs
from medprep.transforms.errors import ItemError
from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions, plan_slide, read_patch
from medprep.transforms.slide_reader import OpenSlideReader, SlideReader, open_slide, strip_rows
from medprep.transforms.slide_tiff import (
    TiffSlideReader,
    aperio_mpp,
    level_downsamples,
    open_tiff_slide,
    resolution_mpp,
    tile_span,
)

REAL_APERIO = os.path.join(os.path.dirname(__file__), "..", "data", "aperio_cmu1_16px.svs")


def write_generic(path, rgb, compression, levels=3, tile=128, mpp=None):
    """A generic pyramidal TIFF: level 0, then reduced-resolution pages (NewSubfileType 1) each half as big."""
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tif:
        level = rgb
        for i in range(levels):
            tif.write(
                level,
                tile=(tile, tile),
                compression=compression,
                photometric="rgb",
                subfiletype=1 if i else 0,
                metadata=None,
                **res,
            )
            h, w = level.shape[:2]
            level = np.asarray(Image.fromarray(level).resize((w // 2 + 1, h // 2 + 1), Image.Resampling.BILINEAR))
    return path


def write_svs_with_associated(path, rgb, mpp=0.5):
    """An Aperio SVS as the scanners write it: level 0, the thumbnail (page 1, stripped), a tiled level 1, then
    the label and macro (stripped, reduced-image NewSubfileType, named on the description's second line)."""
    desc = f"Aperio Image Library v12.0.0 test\r\n{rgb.shape[1]}x{rgb.shape[0]} JPEG/RGB Q=70|AppMag = 20|MPP = {mpp}"
    thumb = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 8, rgb.shape[0] // 8)))
    level1 = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 4, rgb.shape[0] // 4)))
    label = np.full((60, 80, 3), (30, 90, 200), np.uint8)
    macro = np.full((50, 150, 3), (200, 120, 40), np.uint8)
    label_desc, macro_desc = "Aperio Image Library v10.0.50\nlabel 80x60", "Aperio Image Library v10.0.50\nmacro 150x50"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None, description=desc)
        tif.write(thumb, compression="jpeg", photometric="rgb", metadata=None, description="Aperio\r\n thumb")
        tif.write(level1, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
        tif.write(label, compression="lzw", photometric="rgb", metadata=None, subfiletype=1, description=label_desc)
        tif.write(macro, compression="jpeg", photometric="rgb", metadata=None, subfiletype=9, description=macro_desc)
    return path


def write_j2k_svs(path, rgb, compression=33005):
    """An Aperio SVS with JPEG 2000 tiles (33005: RGB; 33003: YCbCr), two tiled levels."""
    desc = f"Aperio Image Library v12.0.0 test\r\n{rgb.shape[1]}x{rgb.shape[0]} J2K|AppMag = 20|MPP = 0.5"
    half = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 4, rgb.shape[0] // 4), Image.Resampling.BILINEAR))
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), compression=compression, photometric="rgb", metadata=None, description=desc)
        tif.write(half, tile=(256, 256), compression=compression, photometric="rgb", metadata=None)
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiffslides")
    rgb = synthetic_slide_rgb(3000, 2100, seed=1)  # odd sizes: partial tiles on every level, downsample 16.04
    return {
        "svs": write_svs(str(d / "s.svs"), rgb, mpp=0.25),
        "svs_big": write_svs(str(d / "big.svs"), synthetic_slide_rgb(6000, 4200, seed=2), mpp=0.25),
        "svs_one_level": write_svs(str(d / "one.svs"), rgb[:700, :1000], mpp=0.5, levels=1),
        "svs_associated": write_svs_with_associated(str(d / "assoc.svs"), rgb[:1200, :1500]),
        "tiff_jpeg": write_generic(str(d / "j.tif"), rgb, "jpeg", mpp=0.5),
        "tiff_lzw": write_generic(str(d / "l.tif"), rgb[:900, :1100], "lzw", tile=96),
        "tiff_deflate": write_generic(str(d / "z.tif"), rgb[:900, :1100], "zlib", mpp=0.25),
        "tiff_raw": write_generic(str(d / "r.tif"), rgb[:500, :700], None, tile=64),
        "svs_j2k": write_j2k_svs(str(d / "j2k.svs"), rgb[:900, :1100]),
        "real_aperio": REAL_APERIO,
    }


def _both(path):
    tiff, ref = open_slide(path), OpenSlideReader(path)
    assert isinstance(tiff, TiffSlideReader)
    return tiff, ref


def _regions(dims, seed=0):
    """(x, y, w, h) in level pixels: the whole level, its right/bottom partial tiles, past the image, random."""
    w, h = dims
    rng = np.random.default_rng(seed)
    fixed = [(0, 0, w, h), (w - 37, h - 21, 64, 64), (w - 5, 0, 40, h + 9), (w + 5, h + 5, 10, 10), (0, h - 1, 50, 5)]
    rand = [
        tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h), *rng.integers(1, 400, 2))) for _ in range(12)
    ]
    return fixed + rand


ALL = [
    "svs",
    "svs_one_level",
    "svs_associated",
    "svs_j2k",
    "tiff_jpeg",
    "tiff_lzw",
    "tiff_deflate",
    "tiff_raw",
    "real_aperio",
]


@pytest.mark.parametrize("name", ALL)
def test_geometry_resolution_and_associated_images_match_openslide(slides, name):
    tiff, ref = _both(slides[name])
    slide = openslide.OpenSlide(slides[name])
    try:
        assert tiff.dimensions == ref.dimensions and tiff.downsamples == ref.downsamples
        assert tiff.mpps == ref.mpps and tiff.mpp_source == ref.mpp_source
        assert tiff.tile_heights == ref.tile_heights and tiff.vendor == ref.vendor
        assert sorted(tiff.associated) == sorted(slide.associated_images)
        for key, image in slide.associated_images.items():
            assert np.array_equal(tiff.associated_image(key), np.asarray(image.convert("RGB"))), key
    finally:
        tiff.close(), ref.close(), slide.close()


def test_fixture_geometry_is_what_it_claims(slides):
    tiff = open_slide(slides["svs_associated"])
    real = open_slide(slides["real_aperio"])
    generic = open_slide(slides["tiff_lzw"])
    try:
        assert tiff.dimensions == [(1500, 1200), (375, 300)] and sorted(tiff.associated) == [
            "label",
            "macro",
            "thumbnail",
        ]
        assert real.dimensions == [(16, 16)] and real.mpps == [0.499] and real.tile_heights == [64]
        assert generic.dimensions == [(1100, 900), (551, 451), (276, 226)] and generic.mpp_source == "none"
    finally:
        tiff.close(), real.close(), generic.close()


@pytest.mark.parametrize("name", ALL)
def test_region_pixels_equal_openslide_on_every_level(slides, name):
    """Max |difference| 0 per region: libjpeg-turbo decodes the JPEG tiles on both sides (imagecodecs and the
    openslide-bin wheel), OpenJPEG the JPEG 2000 ones, LZW/deflate/raw are lossless; edges, partial tiles and
    area past the image included."""
    tiff, ref = _both(slides[name])
    worst = 0
    try:
        for level, dims in enumerate(tiff.dimensions):
            ds = tiff.downsamples[level]
            for x, y, w, h in _regions(dims, seed=level):
                x0, y0 = int(round(x * ds)), int(round(y * ds))
                if round(x0 / ds) != x or round(y0 / ds) != y or (x0 / ds) % 1 or (y0 / ds) % 1:
                    continue  # only whole level pixels: see test_fractional_level_coordinates_snap
                a, b = tiff.read(level, x0, y0, w, h), ref.read(level, x0, y0, w, h)
                assert a.shape == b.shape == (h, w, 3) and a.dtype == np.uint8
                worst = max(worst, int(np.abs(a.astype(np.int16) - b).max()))
    finally:
        tiff.close(), ref.close()
    assert worst == 0


def test_past_the_image_is_white_glass(slides):
    tiff = open_slide(slides["real_aperio"])
    try:
        region = tiff.read(0, 8, 8, 64, 64)  # 8x8 of slide, the rest outside (inside its 64x64 tile's padding)
    finally:
        tiff.close()
    assert (region[8:] == 255).all() and (region[:, 8:] == 255).all() and (region[:8, :8] < 250).any()


@pytest.mark.parametrize("target_mpp", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_whole_patches_are_byte_identical_to_openslide(slides, target_mpp):
    """The plan and every finished patch (PNG bytes) equal: levels 0 (as is, halved), 1 (as is, halved), 2. Level 2
    of this 6000x4200 slide has downsample 16.015, so most of its patches start between level pixels: OpenSlide
    resamples those by the sub-pixel offset (cairo, bilinear), this reader snaps; they differ by at most 15 grey
    levels (mean < 0.25), and are bounded here."""
    options = SlideOptions(
        image=ImageOptions(size=112),
        patch_size=112,
        max_patches=12,
        target_mpp=target_mpp,
        tissue="otsu",
        min_tissue=0.2,
    )
    tiff, ref = _both(slides["svs_big"])
    try:
        a, b = plan_slide(tiff, options), plan_slide(ref, options)
        assert a.info == b.info and a.patches == b.patches and np.array_equal(a.thumbnail, b.thumbnail)
        level = a.choice.level
        assert level == {0.25: 0, 0.5: 0, 1.0: 1, 2.0: 1, 4.0: 2}[target_mpp]
        pa = [read_patch(tiff, level, p, options) for p in a.patches]
        pb = [read_patch(ref, level, p, options) for p in b.patches]
        ds = tiff.downsamples[level]
    finally:
        tiff.close(), ref.close()
    assert pa and [p.info for p in pa] == [p.info for p in pb]
    whole = [(p.x / ds) % 1 == 0 and (p.y / ds) % 1 == 0 for p in a.patches]
    assert [x.encoded for x, w in zip(pa, whole) if w] == [y.encoded for y, w in zip(pb, whole) if w]
    for x, y, w in zip(pa, pb, whole):
        diff = np.abs(np.asarray(x.image, np.int16) - np.asarray(y.image, np.int16))
        assert w or (diff.max() <= 32 and diff.mean() < 1.0)
    assert any(whole) and (all(whole) or target_mpp == 4.0)


def test_fractional_level_coordinates_snap_to_the_nearest_level_pixel(slides):
    """OpenSlide paints a level at x0 / downsample with cairo's sub-pixel offset; this reader reads the nearest
    level pixel (documented in slide_tiff.py)."""
    tiff, ref = _both(slides["svs"])
    try:
        snapped = tiff.read(1, 4 * 100 + 1, 4 * 50 + 2, 64, 64)  # (100.25, 50.5) -> (100, 51) (half to even: 50)
        assert np.array_equal(snapped, tiff.read(1, 400, 200, 64, 64))
        shifted = ref.read(1, 401, 202, 64, 64)
        assert not np.array_equal(shifted, ref.read(1, 400, 200, 64, 64))  # OpenSlide resamples
    finally:
        tiff.close(), ref.close()


def test_open_slide_picks_tifffile_for_the_tiff_family_and_openslide_for_the_rest(slides, tmp_path):
    for name in ALL:
        reader = open_slide(slides[name])
        assert isinstance(reader, TiffSlideReader), name
        reader.close()
    ycbcr_j2k = write_j2k_svs(str(tmp_path / "ycc.svs"), synthetic_slide_rgb(600, 500), compression=33003)
    assert open_tiff_slide(ycbcr_j2k) is None
    reader = open_slide(ycbcr_j2k)
    assert isinstance(reader, OpenSlideReader)
    reader.close()
    rgba = tmp_path / "rgba.tif"  # 4 samples: not this reader's, OpenSlide reads it
    tifffile.imwrite(rgba, np.full((300, 300, 4), 200, np.uint8), tile=(128, 128), photometric="rgb", metadata=None)
    assert open_tiff_slide(str(rgba)) is None
    reader = open_slide(str(rgba))
    assert isinstance(reader, OpenSlideReader) and reader.read(0, 0, 0, 4, 4).shape == (4, 4, 3)
    reader.close()
    (tmp_path / "x.svs").write_bytes(b"not a slide at all" * 100)
    with pytest.raises(ItemError) as e:
        open_slide(str(tmp_path / "x.svs"))
    assert e.value.stage == "decode"
    data = open(slides["svs"], "rb").read()
    (tmp_path / "t.svs").write_bytes(data[: len(data) // 3])
    with pytest.raises(ItemError) as e:
        reader = open_slide(str(tmp_path / "t.svs"))
        reader.read(0, 0, 0, 3000, 2100)
    assert e.value.stage == "decode"


def test_the_readers_can_be_chosen_by_environment(slides, monkeypatch):
    """$MEDPREP_SLIDE_READERS=openslide sends every slide file to OpenSlide (a fallback switch); unknown names fail."""
    monkeypatch.setenv("MEDPREP_SLIDE_READERS", "openslide")
    reader = open_slide(slides["svs"])
    assert isinstance(reader, OpenSlideReader)
    reader.close()
    monkeypatch.setenv("MEDPREP_SLIDE_READERS", "tifffile, openslide")
    reader = open_slide(slides["svs"])
    assert isinstance(reader, TiffSlideReader)
    reader.close()
    monkeypatch.setenv("MEDPREP_SLIDE_READERS", "cucim")
    with pytest.raises(ValueError, match="unknown slide reader 'cucim'"):
        open_slide(slides["svs"])


class CountingReader:
    """A SlideReader that records every read (level, pixels) and passes it on."""

    def __init__(self, inner: SlideReader):
        self.inner = inner
        self.rows: dict[int, int] = {}
        self.dimensions, self.downsamples, self.mpps = inner.dimensions, inner.downsamples, inner.mpps
        self.mpp_source = inner.mpp_source
        self.tile_heights = getattr(inner, "tile_heights", [])

    def read(self, level, x0, y0, width, height):
        self.rows[level] = self.rows.get(level, 0) + width * height  # pixels: thumbnails are read in blocks
        return self.inner.read(level, x0, y0, width, height)

    def thumbnail(self, target_mpp, max_side=4096):
        from medprep.transforms.slide_reader import level_thumbnail

        return level_thumbnail(self, target_mpp, max_side)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("opener", [open_slide, OpenSlideReader])
def test_planning_reads_one_level_once(slides, opener):
    """A one-level slide: level 0 read once (every row, each tile decoded once); a pyramid: only the smallest level
    that serves the 1.25x thumbnail (8 µm/px: level 2 of the 0.25 µm/px SVS), once."""
    options = SlideOptions(image=ImageOptions(size=64), patch_size=64, max_patches=4)
    for name, level in (("svs_one_level", 0), ("svs", 2)):
        counting = CountingReader(opener(slides[name]))
        try:
            plan_slide(counting, options)
        finally:
            counting.close()
        assert counting.rows == {level: counting.dimensions[level][0] * counting.dimensions[level][1]}, name
        inner = counting.inner
        if isinstance(inner, TiffSlideReader):
            w, h = inner.dimensions[level]
            assert dict(inner.decoded) == {level: -(-w // 256) * -(-h // 256)}, name


def test_metadata_helpers():
    assert aperio_mpp("Aperio Image Library v12\r\n46000x32914|AppMag = 20|MPP = 0.4990|Left = 2") == 0.499
    assert aperio_mpp("Aperio|AppMag = 20") is None and aperio_mpp("Aperio|MPP = n/a") is None
    assert aperio_mpp("Aperio|MPP = 0") is None
    assert resolution_mpp((20000, 1), 3) == 0.5 and resolution_mpp(50800.0, 2) == 0.5
    assert resolution_mpp((1, 1), 1) is None and resolution_mpp((0, 1), 3) is None
    assert level_downsamples([(300, 250), (75, 62)]) == [1.0, (4.0 + 250 / 62) / 2]
    assert list(tile_span(250, 20, 256, 1000)) == [0, 1] and list(tile_span(990, 64, 256, 1000)) == [3]
    assert list(tile_span(1005, 10, 256, 1000)) == [] and list(tile_span(0, 256, 256, 1000)) == [0]
    assert strip_rows(256) == 1024 and strip_rows(240) == 960 and strip_rows(0) == 1024 and strip_rows(2048) == 2048


def test_patch_png_decodes_to_the_read_pixels(slides):
    """A finished patch is the region read (no resize at 1.0 µm/px from level 1)."""
    options = SlideOptions(image=ImageOptions(size=224), patch_size=224, max_patches=2)
    tiff = open_slide(slides["svs_big"])
    try:
        plan = plan_slide(tiff, options)
        patch = plan.patches[0]
        finished = read_patch(tiff, plan.choice.level, patch, options)
        direct = tiff.read(1, patch.x, patch.y, 224, 224)
    finally:
        tiff.close()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(finished.encoded)).convert("RGB")), direct)
