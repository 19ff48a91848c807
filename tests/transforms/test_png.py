"""The fast PNG encoder: standard PNG that every decoder reads back to the same pixels."""

import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from medprep.samples import synthetic_fundus
from medprep.transforms.encode import encode_image
from medprep.transforms.png import encode_png


def _chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body)
        out.append((tag, body))
        pos += 12 + length
    return out


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (5, 1, 3), (33, 17, 3), (896, 896, 3), (3, 4), (64, 65)])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_round_trip_through_pillow_and_libpng(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(pixels, level)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert np.array_equal(imagecodecs.png_decode(data), pixels)  # libpng checks CRCs and Adler-32
    assert encode_png(pixels, level) == data  # deterministic


def test_stream_layout_is_sub_filtered_rows():
    pixels = np.array([[[10, 20, 30], [15, 20, 25]], [[0, 0, 0], [255, 255, 255]]], np.uint8)
    chunks = _chunks(encode_png(pixels))
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (2, 2, 8, 2, 0, 0, 0)
    raw = zlib.decompress(chunks[1][1])
    assert raw == bytes([1, 10, 20, 30, 5, 0, 251, 1, 0, 0, 0, 255, 255, 255])


def test_encode_image_uses_it_for_levels_0_to_3_and_pillow_above():
    img = Image.fromarray(synthetic_fundus(896, seed=3))
    fast, pillow = encode_image(img, "png", png_level=1), encode_image(img, "png", png_level=6)
    assert fast == encode_png(np.asarray(img), 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pillow))), np.asarray(img))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    assert len(fast) <= 1.05 * len(buf.getvalue())  # no larger than Pillow's own level 1


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2), np.uint16), np.zeros((0, 3, 3), np.uint8)]
)
def test_rejects_what_it_does_not_encode(bad):
    with pytest.raises(ValueError):
        encode_png(bad)
