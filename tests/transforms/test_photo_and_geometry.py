import io

import numpy as np
import pytest
from PIL import Image

from medprep.samples import save_jpeg_with_orientation
from medprep.transforms.errors import ItemError
from medprep.transforms.geometry import map_boxes, map_boxes_to_pixels, pad_and_resize, plan_pad_resize, validate_boxes
from medprep.transforms.image import decode_any, prepare_image
from medprep.transforms.localization import box_answer
from medprep.transforms.photo import decode_photo


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_pad_plan_is_centred_floor():
    p = plan_pad_resize(100, 61, 896)
    assert (p.side, p.left, p.top) == (100, 0, 19)  # (100-61)//2 = 19
    p = plan_pad_resize(7, 10, 5)
    assert (p.side, p.left, p.top, p.scale) == (10, 1, 0, 0.5)


def test_pad_is_pixel_exact_and_resize_matches_pillow_bilinear():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    img, plan = pad_and_resize(rgb, 50)  # no resize: pure padding
    out = np.asarray(img)
    assert (plan.left, plan.top) == (0, 10)
    assert np.array_equal(out[10:40], rgb) and not out[:10].any() and not out[40:].any()
    img2, _ = pad_and_resize(rgb, 896)
    padded = np.zeros((50, 50, 3), np.uint8)
    padded[10:40] = rgb
    ref = Image.fromarray(padded).resize((896, 896), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(img2), np.asarray(ref))


def test_box_mapping_exact_coordinates():
    plan = plan_pad_resize(880, 1024, 896)  # side 1024, left 72, top 0
    norm = map_boxes([[272, 392, 328, 448]], plan)
    assert norm.tolist() == [[344 / 1024, 392 / 1024, 400 / 1024, 448 / 1024]]
    assert map_boxes_to_pixels([[272, 392, 328, 448]], plan).tolist() == [[301.0, 343.0, 350.0, 392.0]]
    assert box_answer(norm, ["nodule"]) == '[{"box_2d": [383, 336, 438, 391], "label": "nodule"}]'


def test_box_drawn_in_source_lands_on_mapped_output_pixels():
    src = np.zeros((200, 100, 3), np.uint8)
    src[40:80, 20:60] = 255  # box [20, 40, 60, 80]
    img, plan = pad_and_resize(src, 100)  # side 200 -> scale 0.5, left 50
    assert map_boxes([[20, 40, 60, 80]], plan).tolist() == [[70 / 200, 40 / 200, 110 / 200, 80 / 200]]
    x0, y0, x1, y1 = map_boxes_to_pixels([[20, 40, 60, 80]], plan)[0].tolist()
    assert (x0, y0, x1, y1) == (35.0, 20.0, 55.0, 40.0)
    out = np.asarray(img)[..., 0]
    assert out[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].min() == 255
    assert out[: int(y0) - 1].max() == 0 and out[int(y1) + 1 :].max() == 0


def test_validate_boxes():
    assert validate_boxes([[0, 0, 10, 10]], 10, 10) is None
    assert "outside" in validate_boxes([[0, 0, 11, 10]], 10, 10)
    assert "outside" in validate_boxes([[5, 5, 5, 8]], 10, 10)
    assert "non-finite" in validate_boxes([[0, 0, float("nan"), 1]], 10, 10)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:10, :10] = (255, 0, 0)  # red top-left corner in the true orientation
    for orientation in (3, 6, 8):
        path = save_jpeg_with_orientation(str(tmp_path / f"o{orientation}.jpg"), rgb, orientation)
        out, info = decode_photo(open(path, "rb").read())
        assert out.shape == (40, 60, 3) and info["exif_orientation"] == orientation
        assert out[3, 3, 0] > 200 and out[3, 3, 1] < 60 and out[36, 56, 0] < 60


def test_palette_alpha_cmyk_16bit():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert decode_photo(_png(pal))[0][0, 0].tolist() == [10, 20, 30]
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 255))
    out = decode_photo(_png(rgba))[0]
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [200, 100, 50]
    buf = io.BytesIO()
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(buf, format="JPEG", quality=100)
    red = decode_photo(buf.getvalue())[0][1, 1]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    grey16 = Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16))
    assert decode_photo(_png(grey16))[0][0, :, 0].tolist() == [0, 1, 255]


def test_unreadable_and_truncated_png():
    with pytest.raises(ItemError) as e:
        decode_any(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert e.value.stage == "decode"
    good = _png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ItemError, match="cannot decode image"):
        decode_any(good[: len(good) // 2])


def test_decompression_bomb_png_refused():
    big = Image.new("L", (20000, 20000))
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=9)  # ~400 MPx in a tiny file
    assert len(buf.getvalue()) < 2_000_000
    with pytest.raises(ItemError, match="above the limit|bomb"):
        decode_photo(buf.getvalue(), max_pixels=50_000_000)


def test_prepare_image_api_outputs():
    from pydicom.data import get_testdata_file

    p = prepare_image(get_testdata_file("CT_small.dcm"), prompt="Describe.")
    assert p.images[0].size == (896, 896) and p.images[0].mode == "RGB"
    assert p.messages == [
        {"role": "user", "content": [{"type": "image", "image": p.images[0]}, {"type": "text", "text": "Describe."}]}
    ]
    assert Image.open(io.BytesIO(p.encoded[0])).tobytes() == p.images[0].tobytes()
    assert p.image_info[0]["pad_resize"]["scale"] == 7.0


def test_max_pixels_governs_pillows_own_limit():
    """A 196-Mpx photo (above Pillow's default bomb limit of 2 x 89.5 Mpx) decodes when max_pixels allows it,
    and is refused by medprep's message, not Pillow's, when it does not."""
    big = Image.new("L", (14000, 14000), 7)
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=1)
    del big
    Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default, whatever ran before
    rgb, info = decode_photo(buf.getvalue(), max_pixels=250_000_000)
    assert rgb.shape == (14000, 14000, 3) and int(rgb[7000, 7000, 0]) == 7 and info["columns"] == 14000
    del rgb
    with pytest.raises(ItemError, match="image is 14000x14000 pixels, above the limit of 150000000"):
        decode_photo(buf.getvalue(), max_pixels=150_000_000)
