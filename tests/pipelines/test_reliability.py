"""Reruns, atomic overwrite, crashes, verification, fault injection: nothing lost, nothing half-written."""

import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import main, run_pipeline


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i in range(12):
        (tmp_path / f"i{i}.png").write_bytes(_png(i))
        rows.append(
            {"id": f"r{i}", "image": str(tmp_path / f"i{i}.png"), "text": f"caption {i}", "patient_id": f"p{i}"}
        )
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(m)


def _files(out):
    return sorted(
        os.path.relpath(f, out) for f in glob.glob(os.path.join(out, "**"), recursive=True) if os.path.isfile(f)
    )


def _snapshot(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in _files(out)}


def test_overwrite_replaces_everything_and_leaves_no_stale_shard(manifest, tmp_path):
    out = str(tmp_path / "out")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, "--num_shards", "3"])
    assert "parquet/train-00002-of-00003.parquet" in _files(out)
    run_pipeline("images", ["--input", manifest, "--output_dir", out, "--num_shards", "1", "--overwrite"])
    files = _files(out)
    assert "parquet/train-00000-of-00001.parquet" in files
    assert not [f for f in files if "of-00003" in f] and not [f for f in os.listdir(out) if f.startswith(".staging")]


def test_crashed_run_leaves_previous_dataset_intact(manifest, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    run_pipeline("images", ["--input", manifest, "--output_dir", out])
    before = _snapshot(out)
    import medprep.pipelines.io.sinks as sinks

    def boom(*args, **kwargs):
        raise OSError("disk on fire (injected)")

    monkeypatch.setattr(sinks, "_write_parquet", boom)
    with pytest.raises(Exception, match="disk on fire"):
        run_pipeline("images", ["--input", manifest, "--output_dir", out, "--overwrite"])
    assert _snapshot(out) == before  # staging folders are hidden and not part of the dataset
    assert [f for f in os.listdir(out) if f.startswith(".staging")]


def test_rerun_without_overwrite_is_refused(manifest, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["images", "--input", manifest, "--output_dir", out]) == 0
    before = _snapshot(out)
    assert main(["images", "--input", manifest, "--output_dir", out]) == 2
    assert "--overwrite" in capsys.readouterr().err and _snapshot(out) == before


def test_unwritable_output_dir_fails_before_work(manifest, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["images", "--input", manifest, "--output_dir", str(tmp_path / "afile" / "out")]) == 2
    assert "--output_dir" in capsys.readouterr().err


def test_slow_item_times_out_and_the_rest_survive(manifest, tmp_path, monkeypatch):
    import time

    import medprep.pipelines.graphs.images as images

    real = images.decode_any

    def slow_on_row_3(data, name, options):
        if name.endswith("i3.png"):
            deadline = time.time() + 30
            while time.time() < deadline:  # a Python-level hang: interrupted by the limit
                pass
        return real(data, name, options)

    monkeypatch.setattr(images, "decode_any", slow_on_row_3)
    t = time.time()
    s = run_pipeline("images", ["--input", manifest, "--output_dir", str(tmp_path / "o"), "--item_timeout", "2"])
    assert time.time() - t < 25
    assert (s["examples"], s["errors"], s["reconciled"]) == (11, 1, True)
    assert s["errors_by_stage"] == {"timeout": 1}


def test_fault_injection_random_raises_and_garbage_sources_still_reconcile(manifest, tmp_path, monkeypatch):
    """A worker raising on random items, and sources turned to garbage: every input is accounted for."""
    import random

    import medprep.pipelines.graphs.images as images

    rows = [json.loads(line) for line in open(manifest)]
    for r in rows[8:]:  # the last 4 sources return garbage
        open(r["image"], "wb").write(os.urandom(2000))
    rng = random.Random(7)
    doomed = set(rng.sample(range(8), 3))  # 3 of the first 8 raise an unexpected exception
    real = images.PrepareImageRow.outputs

    def flaky(self, row):
        if row["row"] - 1 in doomed:
            raise RuntimeError("injected worker fault")
        return real(self, row)

    monkeypatch.setattr(images.PrepareImageRow, "outputs", flaky)
    out = str(tmp_path / "o")
    s = run_pipeline("images", ["--input", manifest, "--output_dir", out, "--max_error_fraction", "1"])
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (12, 5, 7, True)
    assert s["errors_by_class"] == {"ItemError": 4, "RuntimeError": 3}
    lines = [json.loads(x) for x in open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl"))]
    assert sorted(e["row"] for e in lines if e["error"] == "RuntimeError") == sorted(d + 1 for d in doomed)
    assert sorted(e["row"] for e in lines if e["stage"] == "decode") == [9, 10, 11, 12]
    from medprep.pipelines.tools.verify import verify

    problems, facts = verify(out)
    assert problems == [] and facts["examples"] == 5


def test_job_commits_its_own_outputs_when_the_launcher_does_not_wait(manifest, tmp_path):
    """The flex-template path: run without waiting; the pipeline's last step commits staging."""
    from medprep.pipelines.cli.flex_main import main as flex_main
    from medprep.pipelines.cli.main import run_pipeline_with_result

    out = tmp_path / "o"
    summary, _ = run_pipeline_with_result("images", ["--input", manifest, "--output_dir", str(out)], wait=False)
    assert summary is None
    data = json.load(open(out / "summary.json"))
    assert data["reconciled"] and data["examples"] > 0
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]
    assert flex_main(["--pipeline=images", f"--input={manifest}", f"--output_dir={out}", "--overwrite"]) == 0
    assert json.load(open(out / "summary.json"))["examples"] == data["examples"]
    # the output exists and there is no --overwrite
    assert flex_main(["--pipeline=images", f"--input={manifest}", f"--output_dir={out}"]) == 2
