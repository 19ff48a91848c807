"""Issue 13, 'nothing silent': unknown manifest columns, --stride's default, discovery's start-up
checks and relative folders, the transforms API, and error messages that name what they are about."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medprep.pipelines.cli.main import _parser, main, run_pipeline
from medprep.pipelines.cli.options import config_from_args
from medprep.pipelines.io.manifest import ManifestError, inspect_manifest, normalize_row, read_manifest
from medprep.pipelines.io.sources.files import read_bytes
from medprep.samples import synthetic_slide_rgb, write_series, write_svs
from medprep.transforms.errors import ItemError

KNOWN = "box_labels, boxes, id, image, label, modality, mpp, patient_id, prior, prompt, text"
ALLOW = "pass --allow_extra_columns to keep other columns (listed in summary.json)"


def _png(path, size=(40, 30), value=90):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return str(path)


def _write(path, rows):
    """rows (a list of dicts with the same keys) as JSONL, CSV or Parquet, by the file's suffix."""
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "w") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
    elif path.endswith(".csv"):
        keys = list(rows[0])
        with open(path, "w") as fh:
            fh.write(",".join(keys) + "\n")
            fh.write("".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _startup_error(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


# 1. Unknown manifest columns ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize(
    "column,closest", [("promt", "prompt"), ("priors", "prior"), ("bboxes", "boxes"), ("patient", "patient_id")]
)
def test_misspelt_column_is_refused_naming_the_closest_known_one(tmp_path, capsys, suffix, column, closest):
    m = _write(tmp_path / f"m{suffix}", [{"image": "a.png", "text": "t", column: "x"}])
    code, err = _startup_error(["images", "--input", m, "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err == (
        f"medprep: error: --input: {m}: row 1: unknown column {column!r} (did you mean {closest!r}?). "
        f"Known columns: {KNOWN}; {ALLOW}\n"
    )
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_unknown_columns_are_all_named_and_the_first_row_holding_one(tmp_path):
    m = _write(
        tmp_path / "m.jsonl",
        [{"image": "a.png", "text": "t"}, {"image": "b.png", "text": "t", "caption": "c", "Label": "x"}],
    )
    with pytest.raises(ManifestError) as e:
        inspect_manifest(m)
    assert str(e.value) == (
        f"{m}: row 2: unknown column 'caption'; unknown column 'Label' (did you mean 'label'?). "
        f"Known columns: {KNOWN}; {ALLOW}"
    )


def test_a_misspelt_image_column_is_named_before_the_missing_image(tmp_path):
    m = _write(tmp_path / "m.csv", [{"imgae": "a.png", "text": "t"}])
    with pytest.raises(ManifestError, match=r"row 1: unknown column 'imgae' \(did you mean 'image'\?\)"):
        inspect_manifest(m)


def test_csv_header_details(tmp_path):
    # a header ending in a comma (spreadsheet exports): the unnamed column is empty, so nothing is lost
    (tmp_path / "trailing.csv").write_text("image,text,\na.png,t,\n")
    assert inspect_manifest(str(tmp_path / "trailing.csv")) == (1, ())
    assert next(read_manifest(str(tmp_path / "trailing.csv")))["extra"] == {}
    # ... unless it holds a value
    (tmp_path / "unnamed.csv").write_text("image,text,\na.png,t,42\n")
    with pytest.raises(ManifestError, match=r"row 1: unknown a column with no name\. Known"):
        inspect_manifest(str(tmp_path / "unnamed.csv"))
    # more values than the header has columns: refused even when extra columns are allowed
    (tmp_path / "long.csv").write_text("image,text\na.png,t,surplus\n")
    with pytest.raises(ManifestError) as e:
        inspect_manifest(str(tmp_path / "long.csv"), allow_extra_columns=True)
    assert str(e.value) == f"{tmp_path / 'long.csv'}: row 1: more values than the header has columns"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_allowed_extra_columns_are_kept_as_text(tmp_path, suffix):
    rows = [
        {"image": "a.png", "text": "t", "site": "north", "reader_name": "Dr Who", "score": 3},
        {"image": "b.png", "text": "u", "site": "south", "reader_name": "Dr No", "score": 12},
    ]
    m = _write(tmp_path / f"m{suffix}", rows)
    assert inspect_manifest(m, allow_extra_columns=True) == (2, ("reader_name", "score", "site"))
    with pytest.raises(
        ManifestError, match="unknown column 'site'; unknown column 'reader_name'; unknown column 'score'. Known"
    ):
        inspect_manifest(m)
    got = [r["extra"] for r in read_manifest(m)]  # what workers read: never refused there
    assert got == [
        {"site": "north", "reader_name": "Dr Who", "score": "3"},
        {"site": "south", "reader_name": "Dr No", "score": "12"},
    ]


def test_extra_values_of_every_type_become_text():
    row = normalize_row(
        {
            "image": "a.png",
            "n": None,
            "f": 2.0,
            "g": 0.25,
            "b": True,
            "l": [1, "x"],
            "d": {"z": 1, "a": None},
            "s": "été",
        },
        7,
    )
    assert row["extra"] == {
        "n": "",
        "f": "2",
        "g": "0.25",
        "b": "true",
        "l": '[1, "x"]',
        "d": '{"a": null, "z": 1}',
        "s": "été",
    }
    assert normalize_row({"image": "a.png"}, 1)["extra"] == {}


@pytest.fixture(scope="module")
def images_run(tmp_path_factory):
    """One images run: extra columns allowed; a good PNG, a 12-bit lossy JPEG DICOM, a missing relative file."""
    d = tmp_path_factory.mktemp("img")
    os.makedirs(d / "sub")
    _png(d / "sub" / "good.png")
    rows = [
        {"id": "good", "image": "sub/good.png", "text": "fine", "site": "north"},
        {"id": "jpeg12", "image": get_testdata_file("JPGExtended.dcm"), "text": "12-bit lossy", "site": "south"},
        {"id": "gone", "image": "sub/missing.png", "text": "not there", "site": ""},
    ]
    m = _write(d / "m.jsonl", rows)
    args = ["--input", m, "--output_dir", str(d / "o"), "--allow_extra_columns", "--max_error_fraction", "1"]
    s = run_pipeline("images", args)
    errors = {json.loads(x)["row"]: json.loads(x) for x in open(d / "o" / "errors" / "errors-00000-of-00001.jsonl")}
    return d, s, errors


def test_extra_columns_are_listed_in_summary(images_run):
    _, s, _ = images_run
    assert s["extra_columns"] == ["site"]
    assert (s["config"]["allow_extra_columns"], s["config"]["extra_columns"]) == (True, ["site"])
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (3, 1, 2, True)


def test_summary_lists_no_extra_columns_by_default(tmp_path):
    _png(tmp_path / "a.png")
    m = _write(tmp_path / "m.jsonl", [{"image": "a.png", "text": "t"}])
    s = run_pipeline("images", ["--input", m, "--output_dir", str(tmp_path / "o")])
    assert (s["extra_columns"], s["config"]["allow_extra_columns"], s["examples"]) == ([], False, 1)


# 2. --stride defaults to --patch_size ------------------------------------------------------


def _config(argv):
    args, _ = _parser().parse_known_args(argv)
    return config_from_args(args)


def test_stride_defaults_to_patch_size(tmp_path):
    m = _write(tmp_path / "m.jsonl", [{"image": "s.svs", "text": "t"}])
    base = ["slides", "--input", m, "--output_dir", str(tmp_path / "o")]
    assert (_config(base).patch_size, _config(base).stride) == (896, 896)
    patch_256 = _config(base + ["--patch_size", "256"])
    assert (patch_256.patch_size, patch_256.stride) == (256, 256)
    assert _config(base + ["--patch_size", "256", "--stride", "128"]).stride == 128
    assert _config(base + ["--stride", "448"]).stride == 448
    slides = _parser()._subparsers._group_actions[0].choices["slides"]
    (stride,) = [a for a in slides._actions if a.dest == "stride"]
    assert (stride.default, stride.help) == (
        0,
        "grid step in pixels at --target_mpp (default: --patch_size, patches edge to edge)",
    )


def test_stride_default_reaches_the_grid_and_summary(tmp_path):
    # 2048 px at 0.25 µm/px = 512 px at 1 µm/px: 256-px patches at stride 256 are a 2 x 2 grid;
    # the old default stride (896) left one patch, at (0, 0)
    svs = write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(2048, 2048, seed=4), mpp=0.25)
    m = _write(tmp_path / "m.jsonl", [{"id": "s", "image": svs, "text": "tissue", "patient_id": "p"}])
    s = run_pipeline(
        "slides",
        [
            "--input",
            m,
            "--output_dir",
            str(tmp_path / "o"),
            "--patch_size",
            "256",
            "--image_size",
            "64",
            "--tissue",
            "otsu",
            "--min_tissue",
            "0",
        ],
    )
    assert (s["config"]["patch_size"], s["config"]["stride"]) == (256, 256)
    from medprep.schemas import read_records

    (rec,) = list(read_records(str(tmp_path / "o" / "parquet")))
    xy = sorted((json.loads(i)["x"], json.loads(i)["y"]) for i in rec["image_info"])
    assert xy == [(0, 0), (0, 1024), (1024, 0), (1024, 1024)]  # level-0 coordinates


# 3. Discovery -------------------------------------------------------------------------------


def _series_folder(root):
    write_series(str(root / "data" / "vol" / "a"), 4, series=1, patient=3)
    first = sorted((root / "data" / "vol" / "a").iterdir())[0]
    study = str(pydicom.dcmread(str(first), stop_before_pixels=True).StudyInstanceUID)
    (root / "r.csv").write_text(f"study_uid,text\n{study},CT report\n")


@pytest.mark.parametrize("folder", ["data/vol", "data/vol/", "./data/../data/vol"])
def test_relative_folder_is_resolved_once(tmp_path, monkeypatch, folder):
    _series_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = run_pipeline("volumes", ["--input", folder, "--reports", "r.csv", "--output_dir", "o", "--max_slices", "2"])
    assert (s["inputs"], s["examples"], s["errors"]) == (1, 1, 0)
    assert s["config"]["input"] == str(tmp_path / "data" / "vol") + "/"
    assert s["config"]["reports"] == str(tmp_path / "r.csv")


def test_relative_folder_from_another_working_directory(tmp_path, monkeypatch):
    _series_folder(tmp_path)
    os.makedirs(tmp_path / "elsewhere" / "deeper")
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
    s = run_pipeline(
        "volumes",
        ["--input", "../../data/vol", "--reports", "../../r.csv", "--output_dir", "../o", "--max_slices", "2"],
    )
    assert (s["inputs"], s["examples"], s["errors"]) == (1, 1, 0)


def test_discovery_needs_reports_at_startup(tmp_path, capsys):
    _series_folder(tmp_path)
    need = (
        "medprep: error: --reports: discovery (a folder --input or --dicomweb_url) takes each example's text "
        "from a reports file: give --reports (CSV/JSONL/Parquet with study_uid and/or accession_number, text); "
        "without it every input would fail\n"
    )
    for pipeline, source in [
        ("volumes", ["--input", str(tmp_path / "data" / "vol")]),
        ("images", ["--input", str(tmp_path / "data" / "vol") + "/"]),
        ("volumes", ["--dicomweb_url", "http://127.0.0.1:1/dicom-web", "--query", "Modality=CT"]),
    ]:
        code, err = _startup_error([pipeline, *source, "--output_dir", str(tmp_path / "o")], capsys)
        assert (code, err) == (2, need)
    assert not (tmp_path / "o").exists()


def test_options_that_a_manifest_would_ignore_are_refused(tmp_path, capsys):
    _series_folder(tmp_path)
    m = _write(tmp_path / "m.jsonl", [{"image": "a.png", "text": "t"}])
    out = ["--output_dir", str(tmp_path / "o")]
    code, err = _startup_error(["images", "--input", m, "--reports", str(tmp_path / "r.csv"), *out], capsys)
    assert code == 2 and err.startswith("medprep: error: --reports: report texts are joined to discovered data only")
    code, err = _startup_error(
        [
            "volumes",
            "--input",
            str(tmp_path / "data" / "vol"),
            "--reports",
            str(tmp_path / "r.csv"),
            "--query",
            "Modality=CT",
            *out,
        ],
        capsys,
    )
    assert (code, err) == (
        2,
        "medprep: error: --query: QIDO filters apply to --dicomweb_url discovery only "
        "(give --dicomweb_url, or drop --query)\n",
    )
    code, err = _startup_error(["slides", "--input", str(tmp_path / "data" / "vol"), *out], capsys)
    assert code == 2 and err.startswith("medprep: error: --input: slides take a manifest")
    # slides have no discovery options at all (not in `medprep slides --help`): refused by name
    code, err = _startup_error(["slides", "--dicomweb_url", "http://127.0.0.1:1/dicom-web", *out], capsys)
    assert (code, err) == (
        2,
        "medprep: error: --dicomweb_url: unrecognized option (neither a medprep nor a Beam option)\n",
    )


# 4. The transforms API --------------------------------------------------------------------


def test_prepare_slide_is_importable_from_transforms(tmp_path):
    import medprep.transforms
    import medprep.transforms.slide
    from medprep.transforms import SlideOptions, prepare_slide  # README / DESIGN

    assert prepare_slide is medprep.transforms.slide.prepare_slide
    assert SlideOptions is medprep.transforms.slide.SlideOptions
    assert {"prepare_image", "prepare_series", "prepare_slide", "SlideOptions"} <= set(medprep.transforms.__all__)
    svs = write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(1024, 1024, seed=5), mpp=0.5)
    w = prepare_slide(svs, prompt="Describe.", options=SlideOptions(patch_size=128, stride=128, max_patches=2))
    assert [im.size for im in w.images] == [(896, 896), (896, 896)]


def test_importing_transforms_stays_light():
    code = (
        "import sys, transforms; "
        "print(sorted(m for m in ('openslide', 'apache_beam', 'wsidicom', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.stdout == "[]\n"


# 5. Messages name what they are about ----------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("libjpeg") is not None, reason="pylibjpeg-libjpeg is installed")
def test_missing_decoder_is_named(images_run):
    from medprep.transforms.image import decode_any

    expected = (
        "cannot decode pixel data (JPEG Extended (Process 2 and 4)): no installed decoder could "
        "(pillow: Pillow does not support 'JPEG Extended' for samples with 12-bit precision; "
        "gdcm: GDCM does not support 'JPEG Extended' for samples with 12-bit precision); "
        "pydicom would also try pylibjpeg-libjpeg>=2.1 (with pylibjpeg>=2.0), not installed "
        "(GPLv3: not a medprep dependency; install it if its licence suits you)"
    )
    with pytest.raises(ItemError) as e:
        decode_any(open(get_testdata_file("JPGExtended.dcm"), "rb").read(), "JPGExtended.dcm")
    assert (e.value.stage, e.value.message) == ("decode", expected)
    _, _, errors = images_run
    assert (errors[2]["stage"], errors[2]["message"]) == ("decode", expected)


def test_missing_decoder_with_no_installed_plugin(monkeypatch):
    """A compressed syntax none of whose plugins is installed names the packages (not pydicom's traceback)."""
    import medprep.transforms.pixel_decode as pd

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    monkeypatch.setattr(pd, "_plugins", lambda ds: [])
    with pytest.raises(ItemError) as e:
        pd.decode_pixels(ds)
    assert e.value.message == (
        "cannot decode pixel data (JPEG Extended (Process 2 and 4)): no decoder is installed "
        "for it; pydicom would also try pylibjpeg-libjpeg>=2.1 (with pylibjpeg>=2.0), not "
        "installed (GPLv3: not a medprep dependency; install it if its licence suits you)"
    )


def test_unread_relative_reference_shows_where_it_resolved(images_run):
    d, _, errors = images_run
    assert (errors[3]["stage"], errors[3]["ref"]) == ("read", "sub/missing.png")
    resolved = d / "sub" / "missing.png"
    assert errors[3]["message"] == f"cannot read sub/missing.png (resolved to {resolved}): file not found"


def test_read_bytes_names_the_file(tmp_path):
    missing = str(tmp_path / "x.png")
    with pytest.raises(ItemError) as e:
        read_bytes(missing)
    assert e.value.message == f"cannot read {missing}: file not found"
    with pytest.raises(ItemError) as e:
        read_bytes(missing, missing)  # written as resolved: named once
    assert e.value.message == f"cannot read {missing}: file not found"
    with pytest.raises(ItemError) as e:
        read_bytes(missing, "x.png")
    assert e.value.message == f"cannot read x.png (resolved to {missing}): file not found"
