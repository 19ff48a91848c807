"""WSI building blocks: level choice, tissue masks on a synthetic thumbnail, patch grid and sampling."""

import numpy as np
import pytest

from medprep.transforms.errors import ItemError
from medprep.transforms.patches import grid, sample_patches, select_patches
from medprep.transforms.tissue import cell_fractions, cell_mean_grey, otsu_saturation_mask, otsu_threshold, pen_mask
from medprep.transforms.wsi_level import choose_level

SVS_LEVELS = [0.25, 1.0, 4.0, 16.0]  # 40x pyramid with 4x downsamples


@pytest.mark.parametrize(
    "target,level,scale",
    [
        (0.25, 0, 1.0),  # 40x: level 0 as is
        (0.5, 0, 0.5),  # 20x: from level 0, halved
        (1.0, 1, 1.0),  # 10x (the reference): level 1 exactly
        (0.97, 0, 0.25 / 0.97),  # finer than level 1 beyond the 2 % tolerance -> level 0
        (0.99, 1, 1.0 / 0.99),  # within tolerance of level 1 (scanner MPP noise) -> level 1
        (1.01, 1, 1.0 / 1.01),  # within 2 % of level 1 -> level 1, slight downsample
        (2.0, 1, 0.5),  # 5x: level 1 halved
        (8.0, 2, 0.5),  # 1.25x: level 2 halved
        (0.1, 0, 2.5),  # finer than the slide: level 0 upsampled
    ],
)
def test_choose_level(target, level, scale):
    c = choose_level(SVS_LEVELS, target)
    assert (c.level, c.level_mpp) == (level, SVS_LEVELS[level]) and c.scale == pytest.approx(scale)


def test_no_resolution_fails_clearly():
    for levels in ([], [None], [0.0, 1.0]):
        with pytest.raises(ItemError, match="no usable resolution"):
            choose_level(levels, 1.0)


def _thumb():
    """200x300 thumbnail: white background, a pink tissue blob, a blue pen stroke, a black border strip."""
    img = np.full((200, 300, 3), 245, np.uint8)
    y, x = np.mgrid[0:200, 0:300]
    tissue = ((x - 120) / 70.0) ** 2 + ((y - 100) / 60.0) ** 2 < 1
    img[tissue] = (200, 120, 170)
    img[40:46, 200:290] = (30, 60, 200)  # pen
    img[:, 290:] = 0  # black scanner border
    return img, tissue


def test_otsu_mask_finds_tissue_and_drops_pen_and_border():
    img, tissue = _thumb()
    mask = otsu_saturation_mask(img)
    assert mask[100, 120] and mask[tissue].mean() > 0.97
    assert not mask[10, 10] and not mask[43, 240] and not mask[:, 292:].any()
    assert mask[~tissue].mean() < 0.01
    assert pen_mask(img)[43, 240] and not pen_mask(img)[100, 120]


def test_otsu_threshold_on_two_levels():
    v = np.array([10] * 50 + [200] * 50, np.uint8)
    assert 10 <= otsu_threshold(v) < 200


def test_cell_measures_exact():
    mask = np.zeros((10, 10), bool)
    mask[:5, :] = True
    boxes = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 4, 4]]
    assert cell_fractions(mask, boxes).tolist() == [0.5, 1, 0, 1]
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, 2:] = 255
    assert cell_mean_grey(rgb, [[0, 0, 4, 4], [2, 0, 4, 4]]).tolist() == pytest.approx([127.5, 255.0])


def test_grid_coordinates_exact():
    # 4000x3000 level 0 at 0.25 µm/px; 896 px patches at 1.0 µm/px -> 3584 level-0 px, stride 896 -> 3584
    boxes = grid(4000 * 4, 3000 * 4, 896, 896, 0.25, 1.0)
    assert boxes.shape == (3 * 4, 4)  # 16000/3584 -> 4 columns, 12000/3584 -> 3 rows
    assert boxes[0].tolist() == [0, 0, 3584, 3584] and boxes[5].tolist() == [3584, 3584, 7168, 7168]
    half = grid(1000, 1000, 100, 50, 0.5, 0.5)  # stride half the patch: overlapping
    assert len(half) == 19 * 19 and half[1].tolist() == [50, 0, 150, 100]


def test_patch_selection_reference_and_otsu():
    img, tissue = _thumb()
    downsample = 32.0  # thumbnail pixel = 32 level-0 pixels
    boxes = grid(300 * 32, 200 * 32, 28 * 32, 28 * 32, 1.0, 1.0)  # 28x28-pixel cells on the thumbnail
    cells = (boxes / downsample).astype(int)
    g = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    # reference: mean grey of the footprint in [1, 204], computed here directly per cell
    expected_ref = {(x0, y0) for x0, y0, x1, y1 in cells if 1 <= g[y0:y1, x0:x1].mean() <= 204}
    ref = select_patches(boxes, img, downsample, "mean_grey")
    assert {(int(p.x / downsample), int(p.y / downsample)) for p in ref} == expected_ref and expected_ref
    # otsu: every cell with >= 70 % true tissue is kept, none with < 30 %
    truth = {(x0, y0): tissue[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in cells}
    otsu = {
        (int(p.x / downsample), int(p.y / downsample))
        for p in select_patches(boxes, img, downsample, "otsu", mask=otsu_saturation_mask(img), min_tissue=0.5)
    }
    assert {c for c, f in truth.items() if f >= 0.7} <= otsu <= {c for c, f in truth.items() if f >= 0.3}
    # the black border strip (x >= 290) is never tissue under either rule
    assert not any(x >= 280 for x, _ in otsu | expected_ref)


def test_seeded_sampling_is_deterministic_and_row_ordered():
    from medprep.transforms.patches import Patch

    patches = [Patch(x, y, 10.0, 1.0) for y in range(0, 100, 10) for x in range(0, 100, 10)]
    a = sample_patches(patches, 7, seed=3)
    assert a == sample_patches(patches, 7, seed=3) and a != sample_patches(patches, 7, seed=4)
    assert len(a) == 7 and a == sorted(a, key=lambda p: (p.y, p.x))
    assert sample_patches(patches[:5], 7, seed=1) == patches[:5]
