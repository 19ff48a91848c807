"""Issue 13's record-level guarantees: one split per input, no paths or credentials in records, records that do
not depend on where the data lives, a row's text never dropped."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import synthetic_slide_rgb, write_series, write_svs
from medprep.schemas import read_records

# A PACS-export layout: folder and file names hold an MRN, a name and a birth date.
PHI_DIR = os.path.join("MRN-4471923", "DOE^JANE_19600101")
CANARIES = ("MRN-4471923", "DOE^JANE", "19600101", "JANE", "4471923")
SPLIT_ARGS = ["--val_fraction", "0.34", "--test_fraction", "0.33", "--split_salt", "leak-test"]


def _records(out):
    return list(read_records(os.path.join(str(out), "parquet")))


def _shards(out) -> dict:
    files = sorted(
        glob.glob(os.path.join(str(out), "arrayrecord", "*")) + glob.glob(os.path.join(str(out), "parquet", "*"))
    )
    return {os.path.relpath(f, str(out)): open(f, "rb").read() for f in files}


def _nifti(path, seed):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1000, (6, 24, 24)).astype(np.int16))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Images, volumes and slides under a PHI-named folder, manifests with relative references, no patient_id."""
    root = tmp_path_factory.mktemp("site_a")
    data = root / PHI_DIR
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(data / f"DOE^JANE_img{i}.png")
    rel = os.path.join(PHI_DIR, "DOE^JANE_img{}.png")
    rows = [{"image": rel.format(i), "text": f"finding {i}"} for i in range(6)]
    rows.append(
        {
            "image": rel.format(0),
            "text": "Nodule in the right upper lobe.",
            "boxes": [[5, 5, 20, 20]],
            "box_labels": ["nodule"],
        }
    )
    rows.append({"image": rel.format(1), "boxes": [[5, 5, 20, 20]], "box_labels": ["nodule"]})
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for k in range(3):
        _nifti(str(data / f"vol{k}.nii.gz"), k)
    write_series(str(data / "ct_series"), 6, series=1, patient=9)
    vrows = [{"image": os.path.join(PHI_DIR, f"vol{k}.nii.gz"), "modality": "CT", "text": f"CT {k}"} for k in range(3)]
    vrows.append({"image": os.path.join(PHI_DIR, "ct_series"), "text": "CT series"})
    (root / "volumes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vrows))
    for k in range(3):
        write_svs(str(data / f"slide{k}.svs"), synthetic_slide_rgb(4096, 3072, seed=k), mpp=0.25)
    srows = [{"image": os.path.join(PHI_DIR, f"slide{k}.svs"), "text": f"slide {k}"} for k in range(3)]
    (root / "slides.jsonl").write_text("".join(json.dumps(r) + "\n" for r in srows))
    return root


PIPELINE_ARGS = {
    "images": [],
    "volumes": ["--granularity", "series,slice", "--max_slices", "4"],
    "slides": [
        "--granularity",
        "slide,patch",
        "--patch_size",
        "224",
        "--image_size",
        "224",
        "--max_patches",
        "5",
        "--patches_per_example",
        "3",
    ],
}


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory, demo_model_path):
    """Each pipeline run on the tree where it is, and on a copy of it elsewhere."""
    elsewhere = tmp_path_factory.mktemp("site_b") / "copy"
    shutil.copytree(tree, elsewhere)
    outs = {}
    for name, extra in PIPELINE_ARGS.items():
        for where, root in (("a", tree), ("b", elsewhere)):
            out = root.parent / f"out_{name}_{where}"
            s = run_pipeline(
                name,
                [
                    "--input",
                    str(root / f"{name}.jsonl"),
                    "--output_dir",
                    str(out),
                    "--tokenizer",
                    demo_model_path,
                    *SPLIT_ARGS,
                    *extra,
                ],
            )
            outs[(name, where)] = (out, s)
    return outs


@pytest.mark.parametrize("name", list(PIPELINE_ARGS))
def test_records_do_not_depend_on_where_the_data_lives(runs, name):
    (a, sa), (b, _) = runs[(name, "a")], runs[(name, "b")]
    assert sa["errors"] == 0 and sa["examples"] > 0
    assert _shards(a) == _shards(b) and len(_shards(a)) >= 2


@pytest.mark.parametrize("name", list(PIPELINE_ARGS))
def test_no_path_component_in_any_record_byte(runs, name):
    out, _ = runs[(name, "a")]
    blob = b"".join(_shards(out).values()) + open(os.path.join(str(out), "preview.png"), "rb").read()
    for canary in CANARIES:
        assert canary.encode() not in blob, canary
    for rec in _records(out):
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in rec["source"])
        assert [json.loads(i)["source"] for i in rec["image_info"]] == rec["source"]


def _by_input(records, key):
    groups: dict = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def test_one_split_per_slide_across_granularities(runs):
    out, _ = runs[("slides", "a")]
    recs = _records(out)
    by_slide = _by_input(recs, lambda r: r["source"][0])
    assert len(by_slide) == 3
    for slide_recs in by_slide.values():
        patches = [r for r in slide_recs if r["task"] == "patch"]
        slides = [r for r in slide_recs if r["task"] == "slide"]
        assert patches and len(slides) == -(-len(patches) // 3)  # --patches_per_example 3
        assert sorted(img for r in slides for img in r["images"]) == sorted(r["images"][0] for r in patches)
        assert len({r["patient_key"] for r in slide_recs}) == 1 and len({r["split"] for r in slide_recs}) == 1
    # the same patch in a slide record and in its patch record: one split
    images = {}
    for r in recs:
        for img in r["images"]:
            images.setdefault(img, set()).add(r["split"])
    assert all(len(s) == 1 for s in images.values())
    # the keys differ between slides, so they are not all in one split by accident of a shared key
    assert len({rs[0]["patient_key"] for rs in by_slide.values()}) == 3


def test_one_split_per_volume_across_granularities(runs):
    out, _ = runs[("volumes", "a")]
    recs = _records(out)
    series = [r for r in recs if r["task"] == "series"]
    assert len(series) == 4
    for s in series:
        mine = [r for r in recs if set(r["source"]) <= set(s["source"])]
        assert len(mine) == 1 + len(s["images"])  # the series record and one record per selected slice
        assert {r["split"] for r in mine} == {s["split"]} and {r["patient_key"] for r in mine} == {s["patient_key"]}
    assert len({s["patient_key"] for s in series}) == 4


def test_same_image_twice_shares_a_split_and_text_is_kept_with_boxes(runs):
    out, _ = runs[("images", "a")]
    recs = _records(out)
    by_image = _by_input(recs, lambda r: r["source"][0])
    assert all(len({r["split"] for r in rs}) == 1 for rs in by_image.values())
    loc = [r for r in recs if r["task"] == "localization"]
    assert len(loc) == 2
    with_text = [r for r in loc if r["text"] == "Nodule in the right upper lobe."]
    assert len(with_text) == 1 and with_text[0]["boxes"] and with_text[0]["box_labels"] == ["nodule"]
    answer = [r for r in loc if r is not with_text[0]][0]
    assert json.loads(answer["text"])[0]["label"] == "nodule" and "box_2d" in answer["text"]


def test_keep_source_writes_references_relative_to_the_manifest(tree, tmp_path, demo_model_path):
    out = tmp_path / "o"
    run_pipeline("images", ["--input", str(tree / "images.jsonl"), "--output_dir", str(out), "--keep_source"])
    sources = sorted({s for r in _records(out) for s in r["source"]})
    assert sources == [os.path.join(PHI_DIR, f"DOE^JANE_img{i}.png") for i in range(6)]
    # an absolute reference in the manifest is written relative to the manifest's folder as well
    absolute = tmp_path / "abs.jsonl"
    absolute.write_text(json.dumps({"image": str(tree / PHI_DIR / "DOE^JANE_img3.png"), "text": "t"}) + "\n")
    out2 = tmp_path / "o2"
    run_pipeline("images", ["--input", str(absolute), "--output_dir", str(out2), "--keep_source"])
    src = _records(out2)[0]["source"][0]
    assert not os.path.isabs(src) and os.path.normpath(os.path.join(str(tmp_path), src)) == str(
        tree / PHI_DIR / "DOE^JANE_img3.png"
    )


def test_scrub_covers_labels_and_names_from_manifest_columns(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    rows = [
        {
            "image": "a.png",
            "text": "Seen by Dr Quill. Zebulon Marchetti has clear lungs.",
            "prompt": "Describe Zebulon's film.",
            "label": "Marchetti 123-45-6789",
            "boxes": [[1, 1, 5, 5]],
            "box_labels": ["nodule (call 415-555-0134)"],
            "patient_name": "MARCHETTI^ZEBULON",
        }
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    s = run_pipeline(
        "images",
        ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(out), "--scrub_text", "--allow_extra_columns"],
    )
    (rec,) = _records(out)
    assert rec["text"] == "Seen by Dr [NAME]. [NAME] [NAME] has clear lungs."
    assert rec["prompt"] == "Describe [NAME]'s film."
    assert rec["label"] == "[NAME] [SSN]" and rec["box_labels"] == ["nodule (call [PHONE])"]
    blob = b"".join(_shards(out).values())
    assert b"Zebulon" not in blob and b"Marchetti" not in blob and b"MARCHETTI" not in blob
    assert s["scrubbed"] == {"name": 5, "phone": 1, "ssn": 1} and s["extra_columns"] == ["patient_name"]
