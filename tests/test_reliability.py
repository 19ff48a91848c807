"""Reruns, atomic overwrite, crashes, verification, fault injection: nothing lost, nothing half-written."""
import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main, run_pipeline


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i in range(12):
        (tmp_path / f"i{i}.png").write_bytes(_png(i))
        rows.append({"id": f"r{i}", "image": str(tmp_path / f"i{i}.png"), "text": f"caption {i}", "patient_id": f"p{i}"})
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(m)


def _files(out):
    return sorted(os.path.relpath(f, out) for f in glob.glob(os.path.join(out, "**"), recursive=True)
                  if os.path.isfile(f))


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
    import pipelines.sinks as sinks

    def boom(*args, **kwargs):
        raise OSError("disk on fire (injected)")

    monkeypatch.setattr(sinks, "_write_parquet", boom)
    with pytest.raises(Exception):
        run_pipeline("images", ["--input", manifest, "--output_dir", out, "--overwrite"])
    assert _snapshot(out) == before   # staging folders are hidden and not part of the dataset
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
