"""Bad inputs become error lines (stage + reason); bad options/manifests fail before any work."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medprep.pipelines.cli.main import main, run_pipeline
from medprep.samples import write_dicom


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, demo_model_path):
    d = tmp_path_factory.mktemp("bad")
    good = write_dicom(str(d / "good.dcm"), np.full((20, 30), 100, np.uint16), modality="DX")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (d / "notes.txt").write_text("not an image at all " * 20)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, format="PNG")
    (d / "ok.png").write_bytes(buf.getvalue())
    rows = [
        {"image": good, "text": "good row"},
        {"image": str(d / "broken.png"), "text": "unreadable png"},
        {"image": get_testdata_file("rtstruct.dcm"), "text": "no pixel data"},
        {"image": get_testdata_file("MR_truncated.dcm"), "text": "truncated"},
        {"image": str(d / "missing.dcm"), "text": "missing path"},
        {"image": str(d / "ok.png"), "text": "   "},
        {"image": str(d / "ok.png"), "boxes": [[0, 0, 41, 10]], "box_labels": ["x"]},
        {"image": str(d / "notes.txt"), "text": "unsupported format"},
        {"image": get_testdata_file("badVR.dcm"), "text": "bad VR"},
    ]
    manifest = d / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "out"
    summary = run_pipeline(
        "images",
        [
            "--input",
            str(manifest),
            "--output_dir",
            str(out),
            "--tokenizer",
            demo_model_path,
            "--max_error_fraction",
            "1",
        ],
    )
    errors = [json.loads(x) for x in open(out / "errors" / "errors-00000-of-00001.jsonl")]
    return summary, {e["row"]: e for e in errors}


def test_every_bad_row_is_one_error_line_and_good_rows_survive(bad_run):
    summary, errors = bad_run
    assert summary["inputs"] == 9 and summary["reconciled"]
    assert summary["examples"] == 1
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8, 9}


def test_error_reasons(bad_run):
    _, e = bad_run
    assert (e[2]["stage"], "cannot decode image") == ("decode", e[2]["message"][:19])
    assert e[3]["stage"] == "decode" and "no pixel data" in e[3]["message"]
    assert e[4]["stage"] == "decode" and "less than expected" in e[4]["message"]
    assert e[5]["stage"] == "read" and "not found" in e[5]["message"]
    assert e[6]["stage"] == "text" and "empty text" in e[6]["message"]
    assert e[7]["stage"] == "transform" and "outside the 40x30 image" in e[7]["message"]
    assert e[8]["stage"] == "decode" and "unsupported file format" in e[8]["message"]
    assert e[9]["stage"] == "decode" and "invalid NumberOfFrames value '1A'" in e[9]["message"]
    for line in e.values():
        assert set(line) == {"ref", "row", "stage", "error", "message"}


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def _manifest(tmp_path, rows, name="m.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


@pytest.mark.parametrize(
    "option,value,expect",
    [
        ("--image_size", "abc", "--image_size"),
        ("--image_size", "0", "--image_size"),
        ("--formats", "tfrecord", "--formats"),
        ("--val_fraction", "1.5", "--val_fraction"),
        ("--image_format", "gif", "--image_format"),
        ("--ct_windows", "1,2;3", "--ct_windows"),
    ],
)
def test_bad_option_values_fail_at_startup(tmp_path, capsys, option, value, expect):
    m = _manifest(tmp_path, [{"image": "x.png", "text": "t"}])
    with pytest.raises(SystemExit) as exc:
        main(["images", "--input", m, "--output_dir", str(tmp_path / "o"), option, value])
    assert exc.value.code == 2 and expect in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_bad_manifest_rows_name_the_row(tmp_path, capsys):
    cases = [
        ([{"image": "a.png", "text": "t"}, {"text": "no image"}], "row 2: column 'image' is empty"),
        ([{"image": "a.png", "boxes": [[1, 2, 3]], "box_labels": ["x"]}], "row 1: column 'boxes'"),
        ([{"image": "a.png", "boxes": [[1, 2, 3, 4]], "box_labels": []}], "row 1: 1 boxes but 0 box_labels"),
        ([{"id": "a", "image": "a.png"}, {"id": "a", "image": "b.png"}], "row 2: id 'a' repeats row 1"),
    ]
    for rows, message in cases:
        code, err = _cli(["images", "--input", _manifest(tmp_path, rows), "--output_dir", str(tmp_path / "o")], capsys)
        assert code == 2 and "--input" in err and message in err, err
    p = tmp_path / "broken.jsonl"
    p.write_text('{"image": "a.png"}\n{not json\n')
    code, err = _cli(["images", "--input", str(p), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "line 2 is not valid JSON" in err


def test_csv_and_parquet_manifests(tmp_path, demo_model_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (10, 20), (9, 9, 9)).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    img = str(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(
        f'image,text,boxes,box_labels\n{img},"multi\nline report",,\n{img},,"[[0,0,5,5]]","[""spot""]"\n'
    )
    s = run_pipeline("images", ["--input", str(tmp_path / "m.csv"), "--output_dir", str(tmp_path / "o1")])
    assert (s["examples"], s["by_task"]) == (2, {"image_text": 1, "localization": 1})
    pq.write_table(pa.table({"image": [[img]], "text": ["x"], "boxes": [None]}), tmp_path / "m.parquet")
    s = run_pipeline("images", ["--input", str(tmp_path / "m.parquet"), "--output_dir", str(tmp_path / "o2")])
    assert s["examples"] == 1


def test_missing_inputs_and_unknown_options(tmp_path, capsys):
    m = _manifest(tmp_path, [{"image": "a.png", "text": "t"}])
    code, err = _cli(["images", "--input", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "--input" in err and "not found" in err
    code, err = _cli(
        ["images", "--input", m, "--output_dir", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "t.model")], capsys
    )
    assert code == 2 and "--tokenizer" in err
    (tmp_path / "bad.model").write_bytes(b"garbage")
    code, err = _cli(
        ["images", "--input", m, "--output_dir", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "bad.model")],
        capsys,
    )
    assert code == 2 and "--tokenizer" in err and "SentencePiece" in err
    code, err = _cli(["images", "--input", m, "--output_dir", str(tmp_path / "o"), "--imgae_size", "3"], capsys)
    assert code == 2 and "--imgae_size" in err


def test_existing_output_refused_without_overwrite(tmp_path, capsys):
    buf = io.BytesIO()
    Image.new("RGB", (10, 20)).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    m = _manifest(tmp_path, [{"image": str(tmp_path / "a.png"), "text": "t"}])
    assert main(["images", "--input", m, "--output_dir", str(tmp_path / "o")]) == 0
    code, err = _cli(["images", "--input", m, "--output_dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "--overwrite" in err
    assert main(["images", "--input", m, "--output_dir", str(tmp_path / "o"), "--overwrite"]) == 0


def test_manifest_column_types_found_by_fuzzing(tmp_path, capsys):
    """Regressions from tests/test_fuzz.py: wrong-typed columns are ManifestErrors naming row and column."""
    from medprep.pipelines.io.manifest import ManifestError, normalize_row

    for raw, message in [
        ({"image": "a", "box_labels": False}, "row 1: column 'box_labels'"),
        ({"image": "a", "text": ["x"]}, "row 1: column 'text' must be text"),
        ({"image": "a", "boxes": [[1, 2, True, 4]], "box_labels": ["x"]}, "row 1: column 'boxes'"),
        ({"image": "a", "boxes": 5}, "row 1: column 'boxes'"),
    ]:
        with pytest.raises(ManifestError, match=message.replace("[", r"\[")):
            normalize_row(raw, 1)


def test_example_decoder_rejects_wrong_wire_types():
    from medprep.schemas.example_codec import decode_example

    with pytest.raises(ValueError, match="wire type"):
        decode_example(b"\x08\x00")
