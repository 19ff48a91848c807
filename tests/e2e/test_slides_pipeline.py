"""`medprep slides` end to end: fan-out over patch batches, both granularities, bad slides, parity with the API."""

import json
import os

import numpy as np
import pytest

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import synthetic_slide_rgb, write_svs
from medprep.schemas import read_records
from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions, prepare_slide

OPTS = [
    "--patch_size",
    "224",
    "--stride",
    "224",
    "--image_size",
    "224",
    "--max_patches",
    "6",
    "--patches_per_example",
    "4",
    "--split_salt",
    "s",
    "--max_error_fraction",
    "1",  # 4 of the 7 rows fail on purpose
]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    a = write_svs(str(d / "a.svs"), synthetic_slide_rgb(8192, 6144, seed=1), mpp=0.25)
    b = write_svs(str(d / "b.svs"), synthetic_slide_rgb(6144, 4096, seed=2), mpp=0.25)
    nores = write_svs(str(d / "nores.tif"), synthetic_slide_rgb(4096, 2048, seed=3), mpp=None)
    blank = write_svs(str(d / "blank.svs"), np.full((2048, 2048, 3), 245, np.uint8), mpp=0.25)
    data = open(a, "rb").read()
    (d / "trunc.svs").write_bytes(data[: len(data) // 4])
    rows = [
        {"id": "a", "image": a, "text": "Invasive carcinoma.", "patient_id": "p1", "prompt": "Describe."},
        {"id": "b", "image": b, "text": "Benign tissue.", "patient_id": "p2"},
        {"id": "nores", "image": nores, "text": "no resolution"},
        {"id": "nores-override", "image": nores, "text": "resolution from the manifest", "mpp": 0.5},
        {"id": "blank", "image": blank, "text": "glass only"},
        {"id": "trunc", "image": str(d / "trunc.svs"), "text": "truncated"},
        {"id": "missing", "image": str(d / "nope.svs"), "text": "missing"},
    ]
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def run(slides, demo_model_path):
    out = slides / "out"
    s = run_pipeline(
        "slides",
        [
            "--input",
            str(slides / "m.jsonl"),
            "--output_dir",
            str(out),
            "--tokenizer",
            demo_model_path,
            "--granularity",
            "slide,patch",
            "--keep_source",
            *OPTS,
        ],
    )
    errors = {json.loads(x)["row"]: json.loads(x) for x in open(out / "errors" / "errors-00000-of-00001.jsonl")}
    return out, s, errors


def test_counts_and_errors(run):
    out, s, errors = run
    # 3 good slides x (2 slide records of <= 4 patches + 6 patch records) = 24
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (7, 24, 4, True)
    assert s["by_task"] == {"patch": 18, "slide": 6} and s["by_modality"] == {"SM": 24}
    assert "no resolution" in errors[3]["message"] and errors[3]["stage"] == "transform"
    assert "no tissue found" in errors[5]["message"]
    assert errors[6]["stage"] in ("decode", "read") and errors[7]["stage"] == "read"


def test_records_match_prepare_slide(run, slides):
    out, _, _ = run
    recs = list(read_records(str(out / "arrayrecord")))
    options = SlideOptions(image=ImageOptions(size=224), patch_size=224, stride=224, max_patches=6)
    lib = prepare_slide(str(slides / "a.svs"), options=options)
    slide_recs = sorted(
        (r for r in recs if r["task"] == "slide" and r["source"][0].endswith("a.svs")),
        key=lambda r: json.loads(r["image_info"][0])["y"] * 10**6 + json.loads(r["image_info"][0])["x"],
    )
    got = [img for r in slide_recs for img in r["images"]]
    assert got == lib.encoded and [len(r["images"]) for r in slide_recs] == [4, 2]
    infos = [json.loads(i) for r in slide_recs for i in r["image_info"]]
    assert [(i["x"], i["y"]) for i in infos] == [(i["x"], i["y"]) for i in lib.image_info]
    assert all(i["level"] == 1 and i["mpp"] == 1.0 and i["slide"]["sampled"] == 6 for i in infos)
    patch_imgs = sorted(r["images"][0] for r in recs if r["task"] == "patch" and r["source"][0].endswith("a.svs"))
    assert patch_imgs == sorted(lib.encoded)


def test_manifest_mpp_overrides_the_slide(run):
    out, _, _ = run
    recs = [r for r in read_records(str(out / "parquet")) if r["text"] == "resolution from the manifest"]
    info = json.loads(recs[0]["image_info"][0])
    assert info["slide"]["mpp_source"] == "manifest" and info["slide"]["resize"] == 0.5


def test_slides_multiprocessing_is_byte_identical(run, slides, demo_model_path, tmp_path):
    out, _, _ = run
    run_pipeline(
        "slides",
        [
            "--input",
            str(slides / "m.jsonl"),
            "--output_dir",
            str(tmp_path / "mp"),
            "--tokenizer",
            demo_model_path,
            "--granularity",
            "slide,patch",
            "--keep_source",
            *OPTS,
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--min_inputs_per_worker",
            "0",
        ],
    )
    for sub in ("arrayrecord", "parquet", "errors"):
        for f in sorted(os.listdir(out / sub)):
            assert (tmp_path / "mp" / sub / f).read_bytes() == (out / sub / f).read_bytes(), f


def test_outputs_are_byte_identical_with_openslide(run, slides, demo_model_path, tmp_path, monkeypatch):
    """The run reads its SVS files with the tifffile reader; forcing OpenSlide gives the same shards byte for byte
    (same pixels: every patch here starts on a whole pixel of its level). Error lines: same rows and stages."""
    import medprep.transforms.slide_reader as sr
    from medprep.transforms.slide_tiff import TiffSlideReader

    reader = sr.open_slide(str(slides / "a.svs"))
    assert isinstance(reader, TiffSlideReader)
    reader.close()
    monkeypatch.setattr(sr, "FILE_READERS", ["medprep.transforms.slide_reader:OpenSlideReader"])
    assert isinstance(sr.open_slide(str(slides / "a.svs")), sr.OpenSlideReader)
    out, _, errors = run
    args = ["--input", str(slides / "m.jsonl"), "--output_dir", str(tmp_path / "os"), "--tokenizer", demo_model_path]
    run_pipeline("slides", [*args, "--granularity", "slide,patch", "--keep_source", *OPTS])
    for sub in ("arrayrecord", "parquet"):
        names = sorted(os.listdir(out / sub))
        assert names and names == sorted(os.listdir(tmp_path / "os" / sub))
        for f in names:
            assert (tmp_path / "os" / sub / f).read_bytes() == (out / sub / f).read_bytes(), f
    lines = [json.loads(x) for x in open(tmp_path / "os" / "errors" / "errors-00000-of-00001.jsonl")]
    assert {x["row"]: x["stage"] for x in lines} == {r: e["stage"] for r, e in errors.items()}


def test_a_patch_failing_mid_slide_keeps_the_others(slides, tmp_path, monkeypatch):
    import medprep.pipelines.graphs.slides as sl

    real = sl.read_patch
    calls = {"n": 0}

    def flaky(reader, level, patch, options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("injected read failure")
        return real(reader, level, patch, options)

    monkeypatch.setattr(sl, "read_patch", flaky)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": str(slides / "a.svs"), "text": "t"}) + "\n")
    s = run_pipeline("slides", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), *OPTS])
    assert (s["examples"], s["errors"], s["patches"]) == (2, 0, {"unreadable": 1}) and s["images"] == 5


def test_bad_slide_options_fail_at_startup(slides, tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    for option, value in (("--target_mpp", "0"), ("--tissue", "magic"), ("--granularity", "tile")):
        with pytest.raises(SystemExit):
            main(["slides", "--input", str(slides / "m.jsonl"), "--output_dir", str(tmp_path / "o"), option, value])
        assert option in capsys.readouterr().err
