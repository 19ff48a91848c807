import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medprep.samples import write_dicom
from medprep.transforms.dicom_io import read_dataset
from medprep.transforms.dicom_render import RenderOptions, decode_frame, render_dataset
from medprep.transforms.errors import ItemError
from medprep.transforms.image import decode_any
from medprep.transforms.windowing import voi_linear_to_uint8


def _file(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _bytes(name):
    with open(_file(name), "rb") as fh:
        return fh.read()


def test_ct_phantom_hu_to_rgb_exact(tmp_path):
    # stored = HU + 1024 with slope 1, intercept -1024 (typical CT)
    hu = np.array([[-1000, -100, 0, 40, 1000]] * 2, dtype=np.int16)
    path = write_dicom(
        str(tmp_path / "ct.dcm"), (hu + 1024).astype(np.uint16), modality="CT", intercept=-1024.0, slope=1.0
    )
    r = decode_any(open(path, "rb").read(), path)
    assert r.rgb[0, :, 0].tolist() == [3, 115, 128, 132, 252]
    assert r.rgb[0, :, 1].tolist() == [0, 26, 98, 128, 255]
    assert r.rgb[0, :, 2].tolist() == [0, 0, 0, 128, 255]
    assert r.info["modality"] == "CT"


def test_ct_signed_storage_and_slope(tmp_path):
    # signed int16 storage, slope 2: stored -500 -> -1000 HU (air)
    stored = np.array([[-500, 0, 20, 500]], dtype=np.int16)
    path = write_dicom(str(tmp_path / "ct2.dcm"), stored, modality="CT", slope=2.0, intercept=0.0)
    r = decode_any(open(path, "rb").read(), path)
    assert r.rgb[0, :, 2].tolist() == [0, 0, 128, 255]  # HU -1000, 0, 40, 1000 in [0, 80]


def test_monochrome1_is_inverted_after_window(tmp_path):
    values = np.array([[0, 1000, 2000, 4095]], dtype=np.uint16)
    m2 = write_dicom(str(tmp_path / "m2.dcm"), values, modality="DX", window=(2048, 4096))
    m1 = write_dicom(str(tmp_path / "m1.dcm"), values, modality="CR", photometric="MONOCHROME1", window=(2048, 4096))
    g2 = decode_any(open(m2, "rb").read()).rgb[0, :, 0]
    g1 = decode_any(open(m1, "rb").read()).rgb[0, :, 0]
    # LINEAR: ((x - 2047.5) / 4095 + 0.5) * 255
    expected = [round(((x - 2047.5) / 4095 + 0.5) * 255) for x in (0, 1000, 2000, 4095)]
    assert g2.tolist() == expected
    assert g1.tolist() == [255 - v for v in expected]


def test_radiograph_without_window_uses_minmax(tmp_path):
    path = write_dicom(str(tmp_path / "nowin.dcm"), np.array([[100, 200, 300]], dtype=np.uint16), modality="DX")
    r = decode_any(open(path, "rb").read())
    assert r.rgb[0, :, 0].tolist() == [0, 128, 255] and r.info["intensity"] == "minmax"


def test_real_monochrome1_cr_from_pydicom():
    r = decode_any(_bytes("dicomdirtests/77654033/CR1/6154"))
    assert r.info["photometric"] == "MONOCHROME1" and "inverted" in r.info["intensity"]
    ds = pydicom.dcmread(_file("dicomdirtests/77654033/CR1/6154"))
    from pydicom.pixels import apply_modality_lut

    from medprep.transforms.windowing import voi_linear_to_uint8

    c = float(ds.WindowCenter[0] if isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else ds.WindowCenter)
    w = float(ds.WindowWidth[0] if isinstance(ds.WindowWidth, pydicom.multival.MultiValue) else ds.WindowWidth)
    expected = 255 - voi_linear_to_uint8(apply_modality_lut(ds.pixel_array, ds), c, w)
    assert np.array_equal(r.rgb[..., 0], expected)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_compressed_and_other_encodings_decode_to_the_same_pixels(name):
    ref = decode_any(_bytes("MR_small.dcm")).rgb
    assert np.array_equal(decode_any(_bytes(name)).rgb, ref)


def test_jpeg_baseline_ybr_decodes_to_rgb():
    r = decode_any(_bytes("SC_rgb_jpeg_gdcm.dcm"))
    assert r.rgb.shape == (100, 100, 3) and r.info["intensity"] == "color"
    # pydicom's SC_rgb test image: first rows are pure red (within JPEG tolerance)
    assert r.rgb[5, 5, 0] > 240 and r.rgb[5, 5, 1] < 15 and r.rgb[5, 5, 2] < 15


def test_rgb_uncompressed_passes_through():
    ds = pydicom.dcmread(_file("SC_rgb.dcm"))
    r = decode_any(_bytes("SC_rgb.dcm"))
    assert np.array_equal(r.rgb, ds.pixel_array)


def test_16bit_rgb_scaled_to_8bit():
    ds = pydicom.dcmread(_file("SC_rgb_16bit.dcm"))
    r = decode_any(_bytes("SC_rgb_16bit.dcm"))
    expected = np.rint(ds.pixel_array.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(r.rgb, expected)


def test_identifiers_are_returned_not_put_in_info():
    r = decode_any(_bytes("CT_small.dcm"))
    assert r.identifiers["PatientID"] == pydicom.dcmread(_file("CT_small.dcm")).PatientID
    assert "PatientID" not in str(r.info) and r.identifiers["PatientID"] not in str(r.info)


def test_multiframe_takes_requested_frame():
    ds = read_dataset(_bytes("emri_small.dcm")) if get_testdata_file("emri_small.dcm") else pytest.skip()
    f0 = decode_frame(ds, 0)
    f3 = decode_frame(ds, 3)
    assert np.array_equal(f3, ds.pixel_array[3]) and not np.array_equal(f0, f3)
    with pytest.raises(ItemError, match="frame 99"):
        decode_frame(ds, 99)


# ---- bad input ---------------------------------------------------------------------------


def test_truncated_pixel_data_is_decode_error():
    with pytest.raises(ItemError, match="less than expected") as e:
        decode_any(_bytes("MR_truncated.dcm"))
    assert e.value.stage == "decode"


def test_dicom_without_pixel_data():
    with pytest.raises(ItemError, match="no pixel data") as e:
        decode_any(_bytes("rtstruct.dcm"), "rtstruct.dcm")
    assert e.value.stage == "decode"


def test_unsupported_transfer_syntax_names_it(tmp_path):
    # A valid transfer syntax that no installed plugin decodes (MPEG-2 video)
    data = _bytes("MR_small_jp2klossless.dcm")
    ds = pydicom.dcmread(_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    path = str(tmp_path / "jxl.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)
    with pytest.raises(ItemError, match="cannot decode pixel data") as e:
        decode_any(open(path, "rb").read())
    assert e.value.stage == "decode" and data


def test_garbage_bytes_with_dcm_name():
    with pytest.raises(ItemError) as e:
        decode_any(b"\x00" * 64 + b"not a dicom at all", "x.dcm")
    assert e.value.stage == "decode"


def test_pixel_bomb_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 60000
    with pytest.raises(ItemError, match="above the limit"):
        render_dataset(ds, RenderOptions(max_pixels=10_000_000))


def test_empty_and_unknown_files():
    with pytest.raises(ItemError, match="empty"):
        decode_any(b"")
    with pytest.raises(ItemError, match="unsupported file format"):
        decode_any(b"hello world, this is text" * 10, "notes.txt")


@pytest.mark.parametrize(
    "dtype,modality,window",
    [(np.int16, "CT", None), (np.uint16, "DX", (1800, 3000)), (np.uint16, "MR", None), (np.uint16, "DX", None)],
)
def test_lookup_table_path_equals_direct_float_path(tmp_path, dtype, modality, window):
    """The <=16-bit LUT optimization must give exactly what the float64 formula gives per pixel."""
    from medprep.transforms.windowing import CT_PRESETS, ct_to_rgb, minmax_to_uint8

    rng = np.random.default_rng(7)
    stored = rng.integers(-2000 if dtype == np.int16 else 0, 4096, (64, 48)).astype(dtype)
    path = write_dicom(
        str(tmp_path / "x.dcm"),
        stored,
        modality=modality,
        window=window,
        slope=1.5 if modality == "CT" else 1.0,
        intercept=-1024.0 if modality == "CT" else 0.0,
    )
    got = decode_any(open(path, "rb").read()).rgb
    values = stored.astype(np.float64) * (1.5 if modality == "CT" else 1.0) + (-1024.0 if modality == "CT" else 0.0)
    if modality == "CT":
        expected = ct_to_rgb(values, CT_PRESETS["medgemma-1.5"])
    elif window:
        expected = np.repeat(voi_linear_to_uint8(values, *window)[..., None], 3, axis=2)
    else:
        expected = np.repeat(minmax_to_uint8(values)[..., None], 3, axis=2)
    assert np.array_equal(got, expected)


def test_grey_resize_equals_rgb_resize():
    from medprep.transforms.geometry import pad_and_resize

    grey = np.random.default_rng(3).integers(0, 256, (37, 91), dtype=np.uint8)
    a, _ = pad_and_resize(grey, 896)
    b, _ = pad_and_resize(np.repeat(grey[..., None], 3, axis=2), 896)
    assert a.mode == b.mode == "RGB" and a.tobytes() == b.tobytes()


def test_decoder_that_aborts_the_process_is_isolated():
    """Found by atheris: corrupt JPEG 2000 that openjpeg rejects and GDCM answers with abort()."""
    data = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "j2k_gdcm_abort.dcm"), "rb").read()
    with pytest.raises(ItemError, match="gdcm decoder crashed") as e:
        decode_any(data, "x.dcm")
    assert e.value.stage == "decode" and "pylibjpeg" in e.value.message
    # the isolated decoder is replaced: the next GDCM-only file still decodes
    ref = decode_any(_bytes("MR_small.dcm")).rgb
    assert np.array_equal(decode_any(_bytes("MR_small_jpeg_ls_lossless.dcm")).rgb, ref)


def test_multiframe_decodes_only_the_requested_frame(monkeypatch):
    import medprep.transforms.pixel_decode as pd

    calls = []
    real = pd.pixel_array
    monkeypatch.setattr(pd, "pixel_array", lambda ds, **kw: calls.append(kw.get("index")) or real(ds, **kw))
    ds = read_dataset(_bytes("emri_small.dcm"))
    assert np.array_equal(decode_frame(ds, 5), pydicom.dcmread(_file("emri_small.dcm")).pixel_array[5])
    assert calls == [5]
