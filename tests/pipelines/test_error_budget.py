"""The error budget: a run that failed on too many inputs commits nothing and says why, by class."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import main
from medprep.pipelines.records.error_budget import over_budget


def _manifest(tmp_path, good: int, bad: int) -> str:
    rows = []
    for i in range(good):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), np.uint8)).save(buf, "PNG")
        (tmp_path / f"g{i}.png").write_bytes(buf.getvalue())
        rows.append({"image": f"g{i}.png", "text": f"good {i}", "patient_id": f"p{i}"})
    for i in range(bad):
        rows.append({"image": f"missing{i}.png", "text": f"bad {i}", "patient_id": f"q{i}"})
    path = tmp_path / f"m{good}-{bad}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _snapshot(out):
    return {
        os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
        for d, dirs, fs in os.walk(out)
        for f in fs
        if not os.path.relpath(d, out).startswith(".")
    }


@pytest.mark.parametrize(
    ("inputs", "errors", "fraction", "absolute", "over"),
    [
        (10, 0, 0.0, 0, ""),
        (10, 1, 0.1, -1, ""),  # exactly the fraction: within
        (10, 2, 0.1, -1, "2 of 10 inputs failed (20.0% > --max_error_fraction 0.1)"),
        (10, 1, 0.5, 0, "1 of 10 inputs failed (> --max_errors 0)"),
        (4, 4, 0.1, -1, "all 4 inputs failed (100.0% > --max_error_fraction 0.1)"),
        (4, 4, 1.0, -1, ""),  # 1 = never
        (0, 0, 0.1, -1, ""),
        (2, 3, 1.0, -1, ""),  # discovery error lines without an input row: 1 still means never
    ],
)
def test_over_budget(inputs, errors, fraction, absolute, over):
    assert over_budget({"inputs": inputs, "errors": errors}, fraction, absolute) == over


def test_embed_counts_the_images_an_unreadable_range_lost():
    """An unreadable record range is one error line for many images: the budget counts the images lost."""
    # 10 ranges of 256 images, 5 unreadable: 5 error lines (one per range) for 1,280 images lost
    summary = {"inputs": 1285, "errors": 5, "embeddings": 1280, "input": {"images": 2560}}
    assert over_budget(summary, 0.1) == "1280 of 2560 inputs failed (50.0% > --max_error_fraction 0.1)"
    assert over_budget({**summary, "embeddings": 2560, "errors": 0, "inputs": 2560}, 0.1) == ""


def test_a_run_over_budget_commits_nothing_and_keeps_the_previous_dataset(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["images", "--input", _manifest(tmp_path, 6, 0), "--output_dir", out]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    code = main(["images", "--input", _manifest(tmp_path, 1, 3), "--output_dir", out, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 3
    assert "over the error budget: 3 of 4 inputs failed (75.0% > --max_error_fraction 0.1)" in err
    assert "nothing was committed" in err and "ItemError" in err and "read" in err
    assert "file not found" in err  # the first error messages, so the cause is on screen
    assert _snapshot(out) == before
    staging = [n for n in os.listdir(out) if n.startswith(".staging-")]
    assert len(staging) == 1
    report = open(os.path.join(out, staging[0], "error_budget.txt")).read()
    assert "3 of 4 inputs failed" in report and os.path.exists(os.path.join(out, staging[0], "summary.json"))
    assert not os.path.exists(os.path.join(out, ".medprep-lock.json"))


def test_raising_the_budget_commits_and_an_absolute_limit_refuses(tmp_path):
    out = str(tmp_path / "out")
    m = _manifest(tmp_path, 9, 1)
    assert main(["images", "--input", m, "--output_dir", out, "--max_errors", "0"]) == 3
    assert not os.path.exists(os.path.join(out, "summary.json"))
    assert main(["images", "--input", m, "--output_dir", out]) == 0  # 10 % is within the default 0.1
    assert json.load(open(os.path.join(out, "summary.json")))["errors"] == 1
    m2 = _manifest(tmp_path, 1, 3)
    assert main(["images", "--input", m2, "--output_dir", out, "--overwrite", "--max_error_fraction", "1"]) == 0
    assert json.load(open(os.path.join(out, "summary.json")))["errors"] == 3


def test_a_job_over_budget_fails_and_commits_nothing(tmp_path):
    """The flex-template path: the job's own commit step refuses; the launcher's lock is released."""
    from medprep.pipelines.cli.main import run_pipeline_with_result

    out = tmp_path / "out"
    with pytest.raises(Exception, match="over the error budget"):
        run_pipeline_with_result("images", ["--input", _manifest(tmp_path, 1, 3), "--output_dir", str(out)], wait=False)
    assert not (out / "summary.json").exists() and not (out / ".medprep-lock.json").exists()


def test_bad_budget_options_fail_at_start_up(tmp_path, capsys):
    m = _manifest(tmp_path, 1, 0)
    for option, value in (("--max_error_fraction", "1.5"), ("--max_errors", "-3")):
        with pytest.raises(SystemExit) as exc:
            main(["images", "--input", m, "--output_dir", str(tmp_path / "o"), option, value])
        assert exc.value.code == 2 and f"argument {option}: must be in" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
