"""Beam metrics (counters, per-stage latency) and the local progress display, on real runs."""

import io
import os

import pytest

from medprep.pipelines.cli.main import main, run_pipeline_with_result
from medprep.pipelines.graphs.metrics import query_metrics, totals
from medprep.pipelines.graphs.progress import ProgressBar, format_bar, mark_done
from medprep.samples import make_images_samples
from medprep.schemas import read_records
from medprep.transforms.errors import ItemError, stage, timed_stages


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_images_samples(str(tmp_path_factory.mktemp("samples")))


@pytest.mark.parametrize("mode", ["in_process", "multi_processing"])
def test_counters_and_latency_match_the_outputs(samples, demo_model_path, tmp_path, mode):
    extra = (
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--min_inputs_per_worker", "0"]
        if mode == "multi_processing"
        else []
    )
    out = tmp_path / "o"
    summary, result = run_pipeline_with_result(
        "images",
        [
            "--input",
            samples,
            "--output_dir",
            str(out),
            "--tokenizer",
            demo_model_path,
            "--max_error_fraction",
            "1",
            *extra,
        ],
    )
    counters, distributions = query_metrics(result)
    total = totals(counters)
    records = list(read_records(str(out / "arrayrecord")))
    assert total["inputs"] == summary["inputs"] and total["inputs_failed"] == summary["errors"] > 0
    assert total["examples"] == summary["examples"] == len(records)
    assert total["images"] == summary["images"] == sum(len(r["images"]) for r in records)
    assert total["image_bytes"] == sum(len(b) for r in records for b in r["images"])
    by_stage = {name[len("errors_") :]: v for name, v in total.items() if name.startswith("errors_")}
    assert by_stage == summary["errors_by_stage"]
    latency = {name: value for (_, name), value in distributions.items()}
    ok_inputs = summary["inputs"] - summary["errors"]
    assert latency["item_ms"][0] == ok_inputs  # one observation per successful input
    for name in ("read_ms", "decode_ms", "transform_ms", "encode_ms", "text_ms"):
        count, _, low, high = latency[name]
        assert count >= ok_inputs and 0 <= low <= high  # every successful input went through each stage
    n_item, sum_item, _, _ = latency["item_ms"]
    stage_sum = sum(latency[f"{s}_ms"][1] for s in ("read", "decode", "transform", "encode", "text"))
    assert stage_sum <= sum_item + 5 * n_item  # exclusive stage times add up to at most the item
    assert latency["image_kb"][0] == summary["images"]


def test_progress_bar_reports_every_input(samples, demo_model_path, tmp_path, capsys):
    assert (
        main(
            [
                "images",
                "--input",
                samples,
                "--output_dir",
                str(tmp_path / "o"),
                "--tokenizer",
                demo_model_path,
                "--max_error_fraction",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    import json

    summary = json.load(open(tmp_path / "o" / "summary.json"))
    n, failed = summary["inputs"], summary["errors"]
    assert f"medprep: [{'#' * 30}] {n}/{n} inputs  {failed} failed" in err
    assert "medprep latency (ms)" in err and "Prepare" in err and "decode" in err


def test_format_bar():
    assert format_bar(0, 0, 10, 0.0) == "[" + "." * 30 + "] 0/10 inputs  0 failed  0.0/s"
    assert format_bar(5, 1, 10, 2.0) == "[" + "#" * 15 + "." * 15 + "] 5/10 inputs  1 failed  2.5/s  ETA 0:02"
    assert format_bar(7, 0, 0, 2.0) == "7 inputs  0 failed  3.5/s"  # discovery: no total


def test_progress_file_counts_outcomes(tmp_path):
    path = str(tmp_path / "done")
    bar = ProgressBar(path, 4, stream=io.StringIO())
    assert bar.counts() == (0, 0)
    for ok in (True, False, True):
        mark_done(path, ok)
    assert bar.counts() == (3, 1)
    stream = io.StringIO()
    with ProgressBar(path, 4, stream=stream, interval=0.01):
        mark_done(path, True)
    assert stream.getvalue().startswith("medprep: [" + "#" * 30 + "] 4/4 inputs  1 failed")
    assert os.path.getsize(path) == 4


def test_stage_times_are_exclusive_and_errors_keep_their_stage():
    with timed_stages() as times:
        with stage("transform"):
            with stage("encode"):
                sum(range(10000))
        with pytest.raises(ItemError) as info:
            with stage("decode"):
                raise ValueError("bad")
    assert info.value.stage == "decode" and info.value.message == "ValueError: bad"
    assert set(times) == {"transform", "encode", "decode"} and all(t >= 0 for t in times.values())
    with stage("read"):  # outside timed_stages(): nothing is recorded, nothing breaks
        pass
    assert set(times) == {"transform", "encode", "decode"}
