"""The images pipeline end to end on the DirectRunner (FnApiRunner), on the bundled samples."""

import glob
import json
import os

import pytest
from pydicom.data import get_testdata_file

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import fake_identity, make_images_samples
from medprep.schemas import read_records
from medprep.transforms.image import ImageOptions, prepare_image
from medprep.transforms.text import SentencePieceTokenizer

SHARD_GLOBS = ("arrayrecord/*", "parquet/*", "errors/*")


def _run(manifest, out, tokenizer, *extra):
    return run_pipeline(
        "images",
        [
            "--input",
            manifest,
            "--output_dir",
            str(out),
            "--tokenizer",
            tokenizer,
            "--split_salt",
            "test-salt",
            "--val_fraction",
            "0.2",
            "--test_fraction",
            "0.2",
            "--keep_source",
            "--max_error_fraction",
            "1",  # 2 of the 13 sample rows fail on purpose
            *extra,
        ],
    )


def _shard_bytes(out):
    files = sorted(f for g in SHARD_GLOBS for f in glob.glob(os.path.join(str(out), g)))
    return {os.path.relpath(f, str(out)): open(f, "rb").read() for f in files}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_images_samples(str(tmp_path_factory.mktemp("samples")))


@pytest.fixture(scope="module")
def run1(tmp_path_factory, samples, demo_model_path):
    out = tmp_path_factory.mktemp("out1")
    summary = _run(samples, out, demo_model_path)
    return out, summary


def _by_id(out, fmt):
    recs = list(read_records(os.path.join(str(out), fmt)))
    return {r["source"][-1] + ("|" + r["task"]): r for r in recs}


def test_counts_and_reconciliation(run1):
    out, s = run1
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (13, 11, 2, True)
    assert s["errors_by_stage"] == {"decode": 1, "read": 1}
    assert s["by_task"] == {"classification": 1, "image_text": 8, "localization": 1, "longitudinal": 1}
    assert s["images"] == 12
    for part in ("preview.png", "summary.json", "errors/errors-00000-of-00001.jsonl"):
        assert os.path.exists(os.path.join(str(out), part))
    lines = [json.loads(line) for line in open(os.path.join(str(out), "errors/errors-00000-of-00001.jsonl"))]
    assert [(e["row"], e["stage"]) for e in lines] == [(12, "decode"), (13, "read")]
    assert lines[0]["ref"].endswith("MR_truncated.dcm") and "less than expected" in lines[0]["message"]
    assert lines[1]["ref"].endswith("does_not_exist.dcm") and "not found" in lines[1]["message"]


def test_both_formats_decode_to_the_same_records(run1):
    out, _ = run1
    a, p = _by_id(out, "arrayrecord"), _by_id(out, "parquet")
    assert len(a) == 11 and a == p


def test_pipeline_images_equal_library_images(run1, samples):
    out, _ = run1
    recs = _by_id(out, "arrayrecord")
    folder = os.path.dirname(samples)
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "fundus_p4_exif6.jpg", "skin_p5.png", "cxr_p2_mono1.dcm"):
        rec = recs[name + "|" + ("classification" if "fundus_p3" in name else "image_text")]
        assert rec["images"] == prepare_image(os.path.join(folder, name), options=ImageOptions()).encoded
    long = recs["cxr_p1_current.dcm|longitudinal"]
    assert (
        long["images"]
        == prepare_image([os.path.join(folder, "cxr_p1_prior.dcm"), os.path.join(folder, "cxr_p1_current.dcm")]).encoded
    )
    assert [json.loads(i)["source"] for i in long["image_info"]] == long["source"]
    assert long["source"][0].endswith("prior.dcm")


def test_localization_record_exact(run1, samples):
    out, _ = run1
    rec = _by_id(out, "arrayrecord")["cxr_p1_current.dcm|localization"]
    # source 880x1024 -> padded 1024 (left 72): box [272,392,328,448] -> /1024
    assert rec["boxes"] == [[344 / 1024, 392 / 1024, 400 / 1024, 448 / 1024]]
    assert rec["text"] == '[{"box_2d": [383, 336, 438, 391], "label": "nodule"}]'
    assert rec["box_labels"] == ["nodule"] and rec["modality"] == "DX"
    info = json.loads(rec["image_info"][0])
    assert info["pad_resize"] == {
        "src_width": 880,
        "src_height": 1024,
        "side": 1024,
        "left": 72,
        "top": 0,
        "out": 896,
        "scale": 0.875,
    }


def test_text_ids_and_chat_sequence(run1, demo_model_path):
    out, _ = run1
    tok = SentencePieceTokenizer.from_file(demo_model_path)
    soft = tok.token_id("<image_soft_token>")
    for rec in _by_id(out, "parquet").values():
        assert tok.decode(rec["text_ids"]) == rec["text"]
        assert tok.decode(rec["prompt_ids"]) == rec["prompt"]
        assert rec["input_ids"].count(soft) == 256 * len(rec["images"])
        assert len(rec["loss_mask"]) == len(rec["input_ids"]) and sum(rec["loss_mask"]) == len(rec["text_ids"]) + 1
    cls = [r for r in _by_id(out, "parquet").values() if r["task"] == "classification"][0]
    assert cls["text"] == cls["label"] == "no referable diabetic retinopathy"


def test_no_patient_identifier_in_any_output(run1):
    out, _ = run1
    canaries = set()
    for n in (1, 2):
        canaries |= set(fake_identity(n).values())
    canaries |= {"CANARY GENERAL HOSPITAL", "p1", "p2"}
    import pydicom

    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        canaries |= {str(ds.PatientID), str(ds.PatientName)} - {""}
    texts = []
    for fmt in ("arrayrecord", "parquet"):
        for rec in read_records(os.path.join(str(out), fmt)):
            texts += [v for k, v in rec.items() if isinstance(v, str)]
            texts += [
                s for k, v in rec.items() if k != "images" and isinstance(v, list) for s in v if isinstance(s, str)
            ]
            assert len(rec["patient_key"]) == 64
    blobs = "\n".join(texts) + open(os.path.join(str(out), "summary.json")).read()
    blobs += open(os.path.join(str(out), "errors/errors-00000-of-00001.jsonl")).read()
    for c in canaries:
        if c in ("p1", "p2"):
            assert f'"{c}"' not in blobs and f":{c}" not in blobs
        else:
            assert c not in blobs, c
    raw = b"".join(_shard_bytes(out).values())
    for c in canaries - {"p1", "p2"}:
        assert c.encode() not in raw


def test_patients_never_span_splits(run1):
    out, s = run1
    seen = {}
    for rec in read_records(os.path.join(str(out), "arrayrecord")):
        seen.setdefault(rec["patient_key"], set()).add(rec["split"])
        assert os.path.basename(rec["split"]) in ("train", "val", "test")
    assert all(len(v) == 1 for v in seen.values())
    assert set(s["by_split"]) <= {"train", "val", "test"}


def test_rerun_is_byte_identical_and_multiprocessing_too(run1, samples, demo_model_path, tmp_path):
    out1, _ = run1
    _run(samples, tmp_path / "again", demo_model_path)
    assert _shard_bytes(tmp_path / "again") == _shard_bytes(out1)
    _run(
        samples,
        tmp_path / "mp",
        demo_model_path,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        "--min_inputs_per_worker",
        "0",
    )
    assert _shard_bytes(tmp_path / "mp") == _shard_bytes(out1)


def test_num_shards_and_single_format(samples, demo_model_path, tmp_path):
    s = _run(samples, tmp_path / "o", demo_model_path, "--num_shards", "3", "--formats", "parquet")
    names = sorted(os.listdir(tmp_path / "o" / "parquet"))
    assert not os.path.exists(tmp_path / "o" / "arrayrecord")
    n_train = s["by_split"]["train"]
    assert [n for n in names if n.startswith("train")] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert sum(1 for _ in read_records(str(tmp_path / "o" / "parquet"), split="train")) == n_train
