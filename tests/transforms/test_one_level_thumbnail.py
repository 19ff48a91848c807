"""The ~1.25x thumbnail of a one-level slide (no pyramid: planning reads level 0) made block by block: equal to
Pillow's BILINEAR resize of the whole level byte for byte, each tile decoded once, and in memory that does not
grow with the level (a block, one band of reduced rows, the thumbnail), measured in a fresh process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from medprep.transforms.slide_reader import level_thumbnail, open_slide
from medprep.transforms.slide_tiff import TiffSlideReader
from medprep.transforms.streamed_resize import pillow_weights, streamed_resize


def write_one_level(path: str, width: int, height: int, tile: int = 256, mpp: float = 0.25) -> str:
    """A one-level tiled JPEG TIFF (OpenSlide: generic-tiff) written tile by tile: tissue-like blobs on white,
    each tile a shifted copy of one textured pattern, so no whole image is ever built."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:tile, 0:tile]
    base = np.full((tile, tile, 3), 245, np.uint8)
    blob = (yy - tile / 2) ** 2 + (xx - tile / 3) ** 2 < (tile / 3) ** 2
    base[blob] = (rng.integers(120, 200, (int(blob.sum()), 3))).astype(np.uint8)

    def tiles():
        for ty in range(-(-height // tile)):
            for tx in range(-(-width // tile)):
                yield np.roll(base, (ty * 37 + tx * 11) % tile, axis=1)

    with tifffile.TiffWriter(path) as tif:
        tif.write(
            tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            compression="jpeg",
            photometric="rgb",
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
    return path


@pytest.mark.parametrize(
    "size,out,block",
    [((700, 500), (23, 17), (64, 64)), ((997, 61), (31, 2), (100, 7)), ((300, 200), (300, 200), (64, 50)),
     ((40, 30), (97, 71), (16, 16)), ((513, 257), (1, 1), (512, 512)), ((255, 254), (254, 253), (13, 300))],
)  # fmt: skip
def test_streamed_resize_is_pillows_resize(size, out, block):
    """Reductions by fractional and large factors, the identity, an enlargement, blocks that do not divide."""
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image[::7] = 255  # runs of equal values too

    def read(x, y, w, h):
        assert w <= block[0] and h <= block[1]
        return image[y : y + h, x : x + w]

    expected = np.asarray(Image.fromarray(image).resize(out, Image.Resampling.BILINEAR))
    assert np.array_equal(streamed_resize(read, size, out, block), expected)


def test_passes_fed_a_column_or_a_row_at_a_time_give_the_same_bytes(monkeypatch):
    """A full-width strip goes to the horizontal pass a few columns at a time, a band to the vertical pass a few
    rows at a time (FEED_VALUES): here one column and one row, on a strip as wide as the image."""
    from medprep.transforms import streamed_resize as module

    monkeypatch.setattr(module, "FEED_VALUES", 1)
    image = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    got = streamed_resize(lambda x, y, w, h: image[y : y + h, x : x + w], (130, 90), (17, 11), (130, 40))
    assert np.array_equal(got, np.asarray(Image.fromarray(image).resize((17, 11), Image.Resampling.BILINEAR)))


def test_weights_are_pillows_fixed_point_weights():
    """10 -> 3 pixels: scale and support 10/3, centres 5/3, 5, 25/3; windows [trunc(c - 10/3 + 0.5), trunc(c +
    10/3 + 0.5)) clamped to [0, 10); weights normalized to 1, in 22 fractional bits."""
    first, count, weights = pillow_weights(10, 3)
    assert first.tolist() == [0, 2, 5] and count.tolist() == [5, 6, 5]
    assert np.abs(weights.sum(axis=1) - (1 << 22)).max() <= 3  # each weight rounded on its own
    assert (weights[0, :5] > 0).all() and (weights[0, 5:] == 0).all()


def test_one_level_thumbnail_equals_the_whole_level_resized(tmp_path):
    path = write_one_level(str(tmp_path / "one.tif"), 3000, 1100)  # partial edge tiles both ways
    reader = open_slide(path)
    try:
        assert isinstance(reader, TiffSlideReader) and len(reader.dimensions) == 1 and reader.mpps[0] == 0.25
        thumb, downsample = reader.thumbnail(8.0)
        tiles = dict(reader.decoded)
        whole = reader.read(0, 0, 0, 3000, 1100)
    finally:
        reader.close()
    assert thumb.shape == (34, 94, 3) and downsample == 3000 / 94  # 8 µm/px from 0.25: 32x
    expected = np.asarray(Image.fromarray(whole).resize((94, 34), Image.Resampling.BILINEAR))
    assert np.array_equal(thumb, expected)
    assert tiles == {0: 12 * 5}  # each tile decoded once


def test_a_pyramid_level_with_a_fractional_downsample_is_read_in_full_width_bands(tmp_path):
    """Level 1 of 1001 px from 2001 (downsample 1.999…): bands of the whole width, starting on level-0 pixels."""
    rgb = np.random.default_rng(0).integers(0, 256, (1501, 2001, 3), dtype=np.uint8)
    path = str(tmp_path / "pyr.tif")
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate([rgb, np.ascontiguousarray(rgb[::2, ::2])]):
            tif.write(level, tile=(128, 128), photometric="rgb", subfiletype=1 if i else 0, metadata=None,
                      resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip
    reader = open_slide(path)
    try:
        reads = []
        inner = reader.read
        reader.read = lambda level, x, y, w, h: reads.append((level, x, w)) or inner(level, x, y, w, h)
        thumb, _ = level_thumbnail(reader, 1.2)
        whole = inner(1, 0, 0, 1001, 751)
    finally:
        reader.close()
    assert {r[0] for r in reads} == {1} and {(r[1], r[2]) for r in reads} == {(0, 1001)}
    expected = Image.fromarray(whole).resize(thumb.shape[1::-1], Image.Resampling.BILINEAR)
    assert np.array_equal(thumb, np.asarray(expected))


MEASURE = """
import json, resource, sys, tracemalloc
from medprep.transforms.slide_reader import open_slide
reader = open_slide(sys.argv[1])
tracemalloc.start()
thumb, _ = reader.thumbnail(8.0)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
hwm = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
print(json.dumps({"peak": peak, "hwm": hwm, "thumb": thumb.nbytes, "shape": list(thumb.shape),
                  "tiles": dict(reader.decoded)}))
"""


def _measure(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_one_level_thumbnail_memory_does_not_grow_with_the_level(tmp_path):
    """Levels of 8,192 and 32,768 × 2,048 pixels (48 and 192 MB decoded): the thumbnail's traced peak stays
    under 16 MB above the thumbnail itself for both, and the process's high-water mark grows by less than
    24 MB, where full-width strips of 1,024 rows were 24 and 96 MB (plus Pillow's copy of each)."""
    small = _measure(write_one_level(str(tmp_path / "small.tif"), 8192, 2048))
    large = _measure(write_one_level(str(tmp_path / "large.tif"), 32768, 2048))
    assert small["shape"] == [64, 256, 3] and large["shape"] == [64, 1024, 3]
    assert small["tiles"] == {"0": 32 * 8} and large["tiles"] == {"0": 128 * 8}
    for m in (small, large):
        assert m["peak"] - m["thumb"] < 16 * 2**20, m
    assert large["hwm"] - small["hwm"] < 24 * 2**20, (small, large)
