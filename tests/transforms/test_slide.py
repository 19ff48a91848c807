"""Slides through OpenSlide: level/resize choice, patches equal direct reads, tissue exclusions, bad input."""

import io

import numpy as np
import pytest
from PIL import Image

from medprep.samples import synthetic_slide_rgb, write_svs
from medprep.transforms.errors import ItemError
from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions, prepare_slide
from medprep.transforms.slide_reader import OpenSlideReader

W, H = 8192, 6144  # level 0 at 0.25 µm/px; levels 1 (1.0) and 2 (4.0)


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    return write_svs(str(tmp_path_factory.mktemp("wsi") / "s.svs"), synthetic_slide_rgb(W, H, seed=1), mpp=0.25)


def _opts(**kw):
    base = dict(image=ImageOptions(size=224), patch_size=224, stride=224, max_patches=500)
    base.update(kw)
    return SlideOptions(**base)


def test_reference_defaults_read_level_1_without_resize(svs):
    p = prepare_slide(svs, prompt="Describe the tissue.", options=_opts())
    assert p.plan.info["level"] == 1 and p.plan.info["resize"] == 1.0
    assert all(i["read_side"] == 224 and i["level"] == 1 and i["mpp"] == 1.0 for i in p.image_info)
    # grid of 224 px at 1.0 µm/px = 896 level-0 px: 9 x 6 cells, coordinates on the grid
    assert p.plan.info["grid_cells"] == 9 * 6
    assert all(i["x"] % 896 == 0 and i["y"] % 896 == 0 for i in p.image_info)
    content = p.messages[0]["content"]
    assert p.messages[0]["role"] == "user" and len(p.messages) == 1
    images = [{"type": "image", "image": i} for i in p.images]
    assert content == [{"type": "text", "text": "Describe the tissue."}] + images


def test_patch_pixels_equal_a_direct_region_read(svs):
    p = prepare_slide(svs, options=_opts())
    reader = OpenSlideReader(svs)
    try:
        info = p.image_info[0]
        direct = reader.read(1, info["x"], info["y"], 224, 224)
    finally:
        reader.close()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(p.encoded[0])).convert("RGB")), direct)


def test_finer_target_reads_level_0_and_halves(svs):
    p = prepare_slide(svs, options=_opts(target_mpp=0.5))
    assert p.plan.info["level"] == 0 and p.plan.info["resize"] == 0.5
    assert {i["read_side"] for i in p.image_info} == {448}


def test_tissue_rules_exclude_glass_and_black_border(svs):
    for rule in ("mean_grey", "otsu"):
        p = prepare_slide(svs, options=_opts(tissue=rule))
        xs = [i["x"] for i in p.image_info]
        assert xs and max(xs) + 896 <= 0.95 * W + 896, rule  # nothing from the black strip
        assert p.plan.info["tissue_cells"] < p.plan.info["grid_cells"], rule


def test_seeded_sampling(svs):
    a = prepare_slide(svs, options=_opts(max_patches=5, seed=7))
    b = prepare_slide(svs, options=_opts(max_patches=5, seed=7))
    c = prepare_slide(svs, options=_opts(max_patches=5, seed=8))
    key = lambda p: [(i["x"], i["y"]) for i in p.image_info]  # noqa: E731
    assert key(a) == key(b) != key(c) and len(a.images) == 5 and a.encoded == b.encoded
    assert key(a) == sorted(key(a), key=lambda t: (t[1], t[0]))


def test_no_resolution_needs_assume_mpp(tmp_path):
    path = write_svs(str(tmp_path / "g.tif"), synthetic_slide_rgb(2048, 1024), mpp=None)
    with pytest.raises(ItemError, match="no resolution"):
        prepare_slide(path, options=_opts())
    p = prepare_slide(path, options=_opts(assume_mpp=0.5))
    assert p.plan.info["mpp_source"] == "assumed" and p.plan.info["resize"] == 0.5


def test_truncated_unsupported_and_empty_slides(tmp_path, svs):
    data = open(svs, "rb").read()
    (tmp_path / "t.svs").write_bytes(data[: len(data) // 3])
    (tmp_path / "x.svs").write_bytes(b"not a slide at all" * 100)
    for name in ("t.svs", "x.svs"):
        with pytest.raises(ItemError) as e:
            prepare_slide(str(tmp_path / name), options=_opts())
        assert e.value.stage in ("decode", "transform")
    blank = write_svs(str(tmp_path / "blank.svs"), np.full((2048, 2048, 3), 245, np.uint8), mpp=0.25)
    with pytest.raises(ItemError, match="no tissue found"):
        prepare_slide(blank, options=_opts())


def test_out_of_slide_area_is_white_glass(svs):
    reader = OpenSlideReader(svs)
    try:
        edge = reader.read(1, W - 448, H - 448, 224, 224)  # half outside the slide
    finally:
        reader.close()
    assert (edge[-10:, -10:] == 255).all() and edge.dtype == np.uint8
