"""`medprep inspect`: the report renders in a real headless Chromium, images load, counts match summary.json."""

import json
import os
import re
import shutil
import subprocess

import pytest

from medprep.pipelines.cli.main import main, run_pipeline
from medprep.samples import make_images_samples, make_slide_samples, make_volume_samples

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
REQUIRED = os.environ.get("MEDPREP_REQUIRE_CHROMIUM") == "1"


def _browser_dom(path: str, profile: str) -> str:
    if not CHROMIUM:
        if REQUIRED:
            pytest.fail("Chromium is required (MEDPREP_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("Chromium not installed (apt-get install chromium); .ci/run installs it")
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        "file://" + path,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, demo_model_path):
    d = tmp_path_factory.mktemp("inspect")
    outs = {}
    extra = {
        "volumes": ["--max_slices", "8"],
        "slides": ["--max_patches", "6", "--granularity", "slide,patch"],
        "images": ["--max_error_fraction", "1"],  # two sample rows fail on purpose
    }
    for name, make in (
        ("images", make_images_samples),
        ("volumes", make_volume_samples),
        ("slides", make_slide_samples),
    ):
        manifest = make(str(d / "samples"))
        outs[name] = str(d / name)
        run_pipeline(
            name, ["--input", manifest, "--output_dir", outs[name], "--tokenizer", demo_model_path, *extra[name]]
        )
    return d, outs


@pytest.mark.parametrize("name", ["images", "volumes", "slides"])
def test_report_loads_in_chromium_with_all_images_and_matching_counts(outputs, name):
    d, outs = outputs
    out = outs[name]
    assert main(["inspect", out]) == 0
    report = os.path.join(out, "report.html")
    dom = _browser_dom(report, str(d / f"profile-{name}"))
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    ok = int(re.search(r'data-images-ok="(\d+)"', body).group(1))
    assert total > 3 and ok == total, (ok, total)
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("inputs", "examples", "images", "errors"):
        assert re.search(rf'id="count-{key}">(\d+)<', dom).group(1) == str(summary[key]), key
    for task, n in summary["by_task"].items():
        assert re.search(rf'data-task="{task}"><td>{task}</td><td class="n">(\d+)<', dom).group(1) == str(n)
    errors_table = re.search(r'<table id="errors">(.*?)</table>', dom, re.S).group(1)
    assert sum(int(n) for n in re.findall(r'<td class="n">(\d+)</td>', errors_table)) == summary["errors"]


def test_report_content_per_pipeline(outputs):
    _, outs = outputs
    for out in outs.values():  # this test may run on another xdist worker than the one above
        assert main(["inspect", out]) == 0
    images = open(os.path.join(outs["images"], "report.html")).read()
    assert "[-1024,1024] HU" in images and "localization · DX" in images  # CT channels, boxes sample
    assert "cannot read" in images and "&lt;path&gt;" in images  # errors grouped, paths folded
    volumes = open(os.path.join(outs["volumes"], "report.html")).read()
    assert volumes.count('class="slice"') >= 8 and "SLICE 8" in volumes
    slides = open(os.path.join(outs["slides"], "report.html")).read()
    assert slides.count('class="slidemap"') == 2 and "tissue (green) and the" in slides  # one map per slide record


def test_inspect_refuses_a_folder_without_summary(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().out
