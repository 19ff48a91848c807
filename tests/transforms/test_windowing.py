import numpy as np
import pytest

from medprep.transforms.windowing import (
    CT_PRESETS,
    Window,
    ct_to_rgb,
    invert_uint8,
    minmax_to_uint8,
    percentile_to_uint8,
    voi_linear_to_uint8,
)

# HU phantom: air, fat, water, soft tissue, bone
HU = np.array([[-1000, -100, 0, 40, 1000]], dtype=np.float64)


def test_ct_medgemma_15_exact_values():
    rgb = ct_to_rgb(HU, CT_PRESETS["medgemma-1.5"])
    # R [-1024, 1024]: (hu + 1024) / 2048 * 255, rounded half to even
    assert rgb[0, :, 0].tolist() == [3, 115, 128, 132, 252]
    # G [-135, 215]: air and fat below/at 35/350*255 = 25.5 -> 26 (even)
    assert rgb[0, :, 1].tolist() == [0, 26, 98, 128, 255]
    # B [0, 80]
    assert rgb[0, :, 2].tolist() == [0, 0, 0, 128, 255]
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)


def test_ct_medgemma_1_level_width_windows():
    windows = CT_PRESETS["medgemma-1"]
    assert [(w.low, w.high) for w in windows] == [(-1225, 1025), (-135, 215), (0, 80)]
    rgb = ct_to_rgb(HU, windows)
    expected_r = [round((h + 1225) / 2250 * 255) for h in (-1000, -100, 0, 40, 1000)]
    assert rgb[0, :, 0].tolist() == expected_r == [26, 128, 139, 143, 252]  # 127.5 -> 128


def test_negative_hu_never_wraps():
    rgb = ct_to_rgb(np.array([[-3024.0, -2000.0, 3071.0]]))
    assert rgb[0, :, 0].tolist() == [0, 0, 255]


def test_minmax_constant_volume_is_255_and_range():
    assert minmax_to_uint8(np.full((2, 2), 7.0)).tolist() == [[255, 255], [255, 255]]
    assert minmax_to_uint8(np.array([0.0, 1.0, 2.0])).tolist() == [0, 128, 255]  # 127.5 -> 128


def test_percentile_clips_outliers():
    v = np.concatenate([np.arange(100.0), [1e6]])
    out = percentile_to_uint8(v, 0, 99)
    assert out[-1] == 255 and out[0] == 0


def test_voi_linear_matches_dicom_standard():
    # c=100, w=21: y = ((x - 99.5)/20 + 0.5) * 255, clipped
    x = np.array([89.0, 89.5, 90.0, 99.5, 109.0, 109.5, 110.0])
    assert voi_linear_to_uint8(x, 100, 21).tolist() == [0, 0, 6, 128, 249, 255, 255]
    assert voi_linear_to_uint8(np.array([99.0, 100.0]), 100, 1).tolist() == [0, 255]
    assert voi_linear_to_uint8(np.array([90.0, 100.0, 110.0]), 100, 20, "LINEAR_EXACT").tolist() == [0, 128, 255]
    assert voi_linear_to_uint8(np.array([100.0]), 100, 20, "SIGMOID").tolist() == [128]
    with pytest.raises(ValueError):
        voi_linear_to_uint8(x, 100, 0)


def test_invert_and_window_validation():
    assert invert_uint8(np.array([0, 1, 255], np.uint8)).tolist() == [255, 254, 0]
    with pytest.raises(ValueError):
        Window(10, 10)
