"""The fan-out with its rendered images staged (pipelines/io/fanout_parts.py), end to end: volumes and slides
fanned out over 2 worker processes give the same bytes as one step (volumes) and as in-process (slides), only
references cross the grouping per input, and the fan-out parts never outlive the staging folder."""

import json
import os

import numpy as np
import pytest

from medprep.pipelines.cli.main import main, run_pipeline, run_pipeline_with_result
from medprep.pipelines.graphs.metrics import query_metrics, totals
from medprep.samples import synthetic_slide_rgb, write_series, write_svs

MP2 = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--min_inputs_per_worker", "0"]
GROUPED_BOUND = 4096  # bytes per grouped element: references and metadata (an image here is 8-40 KB)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fanout")
    write_series(str(d / "study"), 14, series=1, patient=1)
    write_series(
        str(d / "study"),
        9,
        series=2,
        patient=1,
        modality="MR",
        orientation=(0, 1, 0, 0, 0, -1),
        values=lambda k: np.arange(120, dtype=np.int16).reshape(10, 12) * (k + 1),
    )
    row = {"id": "v1", "image": str(d / "study"), "text": "CT and MR.", "patient_id": "P1"}
    (d / "vol.jsonl").write_text(json.dumps(row) + "\n")
    write_svs(str(d / "s.svs"), synthetic_slide_rgb(2048, 1536, seed=4), mpp=1.0)
    slide = {"id": "w1", "image": str(d / "s.svs"), "text": "Tissue.", "patient_id": "P2"}
    (d / "slides.jsonl").write_text(json.dumps(slide) + "\n")
    return d


def _same_outputs(a, b):
    for sub in ("arrayrecord", "parquet", "errors"):
        names = sorted(os.listdir(a / sub))
        assert names and names == sorted(os.listdir(b / sub))
        for name in names:
            assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), f"{sub}/{name}"
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (a, b)]
    for summary in summaries:
        assert summary["config"].pop("output_dir") in (str(a), str(b))  # the one field that names the folder
        for how in ("item_threads", "min_inputs_per_worker"):  # how the runner spread the items (differs with it)
            summary["config"].pop(how, None)
    assert summaries[0] == summaries[1]


def _left_behind(out):
    """Files under `out` that are not outputs: hidden files and folders (staging, parts) or fan-out parts."""
    found = []
    for folder, dirs, files in os.walk(out):
        rel = os.path.relpath(folder, out)
        hidden = rel != "." and rel.startswith(".")
        found += [os.path.join(rel, f) for f in files if f.endswith(".images") or hidden or f.startswith(".")]
        found += [os.path.join(rel, d) for d in dirs if d.startswith(".")]
    return found


def _grouped(result, unit):
    """(elements, max bytes) of what crossed the fan-in GroupByKey, from the Work step's distribution."""
    _, distributions = query_metrics(result)
    [(count, _, _, high)] = [v for (_, name), v in distributions.items() if name == f"{unit}_grouped_bytes"]
    return count, high


def test_volumes_fan_out_stages_slices_and_matches_one_step(data, demo_model_path, tmp_path):
    """One input (a CT and an MR series, every slice): fanned out over 2 worker processes, its slices go through
    part files and only references through the grouping; the shards, errors and summary.json are those of one
    step, every slice counted alike, the image bytes counted alike; no part is left, and verify passes."""
    args = ["--input", str(data / "vol.jsonl"), "--tokenizer", demo_model_path, "--split_salt", "s"]
    args += ["--slice_selection", "all", "--granularity", "series,slice", "--image_size", "256"]
    runs = {}
    for mode, extra in (("one_step", []), ("fan_out", MP2)):
        _, result = run_pipeline_with_result("volumes", [*args, "--output_dir", str(tmp_path / mode), *extra])
        runs[mode] = result
    counts = {mode: totals(query_metrics(r)[0]) for mode, r in runs.items()}
    assert counts["one_step"]["slices_done"] == counts["fan_out"]["slices_done"] == 23
    assert counts["one_step"]["image_bytes"] == counts["fan_out"]["image_bytes"] > 23 * GROUPED_BOUND
    count, high = _grouped(runs["fan_out"], "slice")
    assert count == 23 and high < GROUPED_BOUND
    _same_outputs(tmp_path / "one_step", tmp_path / "fan_out")
    assert _left_behind(tmp_path / "fan_out") == []
    assert main(["verify", str(tmp_path / "fan_out")]) == 0


def test_slides_fan_out_on_two_workers_matches_in_process(data, demo_model_path, tmp_path):
    """A slide's patches read on 2 worker processes and assembled from their parts (slide and patch records):
    the same bytes as in-process, references only through the grouping, nothing left behind."""
    args = ["--input", str(data / "slides.jsonl"), "--tokenizer", demo_model_path, "--split_salt", "s"]
    args += ["--patch_size", "224", "--image_size", "224", "--max_patches", "12", "--patches_per_example", "5"]
    args += ["--granularity", "slide,patch"]
    s = run_pipeline("slides", [*args, "--output_dir", str(tmp_path / "in_process")])
    _, result = run_pipeline_with_result("slides", [*args, "--output_dir", str(tmp_path / "mp"), *MP2])
    assert (s["examples"], s["images"], s["by_task"]) == (15, 24, {"patch": 12, "slide": 3})
    count, high = _grouped(result, "patch")
    assert count == 12 and high < GROUPED_BOUND
    _same_outputs(tmp_path / "in_process", tmp_path / "mp")
    assert _left_behind(tmp_path / "mp") == [] and _left_behind(tmp_path / "in_process") == []
    assert main(["verify", str(tmp_path / "mp")]) == 0


def test_a_failed_run_leaves_its_fan_out_parts_in_its_staging_folder_only(data, demo_model_path, tmp_path, monkeypatch):
    """A fan-out run that fails after its records are written (here: at summary.json) installs nothing; its
    fan-out parts are inside its staging folder, under the record parts the dataset writer removes."""
    import medprep.pipelines.graphs.dataset_writer as writer
    import medprep.pipelines.graphs.volumes as volumes

    def failing_summary(*args, **kwargs):
        raise OSError("injected: the run dies before summary.json")

    monkeypatch.setattr(volumes, "fan_out_pays", lambda *a: True)
    monkeypatch.setattr(writer, "_write_summary", failing_summary)
    out = tmp_path / "out"
    args = ["--input", str(data / "vol.jsonl"), "--tokenizer", demo_model_path, "--output_dir", str(out)]
    with pytest.raises(Exception, match="injected"):
        run_pipeline("volumes", args)
    parts = [p for p in _left_behind(out) if p.endswith(".images")]
    assert len(parts) == 4  # 2 batches of each series (14 CT and 9 MR slices, 8 a batch)
    assert all(p.split(os.sep)[0].startswith(".staging-") and ".records-tmp/fan-out" in p for p in parts)
    assert not any(os.path.exists(out / name) for name in ("arrayrecord", "parquet", "errors", "summary.json"))
