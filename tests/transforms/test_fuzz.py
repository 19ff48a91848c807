"""Hostile input: random and mutated bytes into every parser. Only the documented error types may escape.

Examples per test: FUZZ_EXAMPLES (default 150; `FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py` for a
longer campaign). Derandomized, so CI is reproducible.
"""

import io
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from medprep.pipelines.io.manifest import ManifestError, normalize_row
from medprep.schemas.example_codec import decode_example
from medprep.transforms.dicom_render import RenderOptions
from medprep.transforms.errors import ItemError
from medprep.transforms.image import ImageOptions, decode_any

N = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=N,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = ImageOptions(size=32, render=RenderOptions(max_pixels=4_000_000))


def _seed_files() -> dict:
    seeds = {}
    for name in (
        "CT_small.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ):
        path = get_testdata_file(name)
        if path:
            seeds[name] = open(path, "rb").read()
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG", "TIFF", "GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        seeds[fmt.lower()] = buf.getvalue()
    return seeds


SEEDS = _seed_files()
MAGICS = [b"\x00" * 128 + b"DICM", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF89a", b"BM", b""]


def _decode_survives(data: bytes, name: str = "") -> None:
    try:
        r = decode_any(data, name, SMALL)
    except ItemError as exc:
        assert exc.stage in ("decode", "read") and exc.message
        return
    assert r.pixels.dtype == np.uint8 and r.pixels.ndim in (2, 3)


@FUZZ
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=4096), name=st.sampled_from(["", "x.dcm", "x.png"]))
def test_random_bytes_behind_real_magic_numbers(magic, body, name):
    _decode_survives(magic + body, name)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_mutated_real_files(seed, data):
    blob = bytearray(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "zero_run"]))
        at = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[at] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del blob[at:]
        elif op == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=64))
        elif op == "zero_run":
            blob[at : at + 16] = b"\x00" * len(blob[at : at + 16])
    _decode_survives(bytes(blob), "fuzz.dcm" if seed.endswith(".dcm") else "fuzz")


@FUZZ
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "Rows": st.integers(-5, 70000),
            "Columns": st.integers(-5, 70000),
            "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
            "SamplesPerPixel": st.integers(0, 5),
            "NumberOfFrames": st.integers(-1, 100000),
            "PhotometricInterpretation": st.sampled_from(
                ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ"]
            ),
            "WindowWidth": st.floats(-10, 10) | st.just(float("nan")),
            "RescaleSlope": st.floats(allow_nan=True, allow_infinity=True),
        },
    )
)
def test_hostile_dicom_headers(header):
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for key, value in header.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    try:
        ds.save_as(buf)
    except Exception:
        return  # pydicom itself refuses to write it: nothing to feed
    _decode_survives(buf.getvalue(), "h.dcm")


@FUZZ
@given(
    row=st.dictionaries(
        st.sampled_from(
            [
                "image",
                "text",
                "prompt",
                "prior",
                "boxes",
                "box_labels",
                "label",
                "patient_id",
                "id",
                "modality",
                "extra",
            ]
        ),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4),
            max_leaves=10,
        ),
    )
)
def test_manifest_rows(row):
    try:
        out = normalize_row(row, 1)
    except ManifestError as exc:
        assert str(exc).startswith("row 1:")
        return
    assert out["images"] and all(isinstance(i, str) for i in out["images"])
    assert all(len(b) == 4 for b in out["boxes"])


@FUZZ
@given(body=st.binary(max_size=2048))
def test_example_decoder(body):
    try:
        rec = decode_example(body)
    except ValueError:
        return
    assert isinstance(rec, dict)


@FUZZ
@given(body=st.binary(max_size=1024), gz=st.booleans())
def test_nifti_reader(body, gz):
    from medprep.transforms.nifti import read_nifti

    data = (b"\x1f\x8b" if gz else b"\x5c\x01\x00\x00") + body
    with pytest.raises(ItemError):
        read_nifti(data, "f.nii.gz" if gz else "f.nii")


def test_tiff_claiming_a_billion_tiles_is_refused_before_decoding():
    # A 100000 x 100000 tiled TIFF header (16x16 tiles: 39 million tiles) in under 200 bytes.
    entries = [
        (256, 4, 1, 100000),
        (257, 4, 1, 100000),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (277, 3, 1, 1),
        (322, 3, 1, 16),
        (323, 3, 1, 16),
        (324, 4, 1, 8),
        (325, 4, 1, 8),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    data = b"II*\x00" + struct.pack("<I", 8) + ifd
    with pytest.raises(ItemError, match="above the limit|bomb|cannot decode"):
        decode_any(data, "bomb.tif", SMALL)
