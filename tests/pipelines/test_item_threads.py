"""--item_threads: inputs prepared in threads inside one worker process, with the same outputs as one at a time."""

import glob
import io
import json
import os
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

from medprep.pipelines.cli.main import run_pipeline
from medprep.pipelines.cli.runner import MAX_AUTO_ITEM_THREADS, item_threads
from medprep.pipelines.graphs.dead_letter import ERRORS, STATS, ItemDoFn, RunningItem
from medprep.transforms.errors import ItemError

# ---- the DoFn: how many items run at once, and that each one's outputs come out exactly once --------

_active = {"now": 0, "peak": 0}
_lock = threading.Lock()


class _SleepyItem(ItemDoFn):
    """Each element n sleeps 0.2 s (releasing the GIL, as numpy and Pillow do), then gives record n;
    n % 5 == 3 fails; the peak of items running at once is kept in this module."""

    concurrent_items = True

    def __init__(self, threads: int, timeout: float | None = None):
        super().__init__()
        self.threads, self.timeout = threads, timeout

    def outputs(self, n):
        with _lock:
            _active["now"] += 1
            _active["peak"] = max(_active["peak"], _active["now"])
        try:
            time.sleep(0.2 if n != 99 else 30)
            if n % 5 == 3:
                raise ItemError("decode", f"bad input {n}")
            yield {"n": n, "images": [b"x" * n]}, {"images": 1}
        finally:
            with _lock:
                _active["now"] -= 1


_found: dict = {}


def _keep(value, tag):
    _found.setdefault(tag, []).append(value)  # in-process runner: this module's dict


def _run(elements, threads, timeout=None):
    _active.update(now=0, peak=0)
    _found.clear()
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        out = (
            p | beam.Create(elements) | beam.ParDo(_SleepyItem(threads, timeout)).with_outputs(ERRORS, STATS, main="r")
        )
        for tag in ("r", ERRORS, STATS):
            _ = out[tag] | f"Keep{tag}" >> beam.Map(_keep, tag)
    return dict(_found), _active["peak"]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_items_run_that_many_at_once_and_each_output_comes_once(threads):
    found, peak = _run(list(range(12)), threads)
    assert peak == threads  # one bundle of 12 elements (Create): never more in flight than asked
    assert sorted(r["n"] for r in found["r"]) == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]
    assert sorted(e["message"] for e in found[ERRORS]) == ["bad input 3", "bad input 8"]
    assert {e["stage"] for e in found[ERRORS]} == {"decode"}
    assert sum(s["inputs_ok"] for s in found[STATS]) == 10
    assert sum(s["images"] for s in found[STATS]) == 10


def test_a_concurrent_item_still_times_out_and_the_others_finish():
    t = time.perf_counter()
    found, _ = _run([0, 1, 99, 2, 4], threads=2, timeout=2)
    assert time.perf_counter() - t < 20
    assert sorted(r["n"] for r in found["r"]) == [0, 1, 2, 4]
    assert [(e["stage"], e["row"]) for e in found[ERRORS]] == [("timeout", -1)]


def test_running_item_deadline_counts_from_its_start():
    item = RunningItem(lambda: time.sleep(0.5) or "done", timeout=1.0, concurrent=True)
    time.sleep(0.8)  # the caller was busy: only 0.2 s of the limit is left, and the item needs 0.0 more
    assert item.result() == "done"
    late = RunningItem(lambda: time.sleep(3), timeout=0.3, concurrent=True)
    with pytest.raises(ItemError, match="0.3 s limit"):
        late.result()
    inline = RunningItem(lambda: threading.current_thread().name, timeout=None)
    assert inline.result() == threading.current_thread().name  # no limit, not concurrent: no thread


# ---- the automatic count ----------------------------------------------------------------------------


def _cores():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "args, local, expected",
    [
        ([], True, lambda c: min(MAX_AUTO_ITEM_THREADS, c)),
        (["--direct_num_workers=2"], True, lambda c: min(MAX_AUTO_ITEM_THREADS, c)),  # in_memory: one process
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], True, lambda c: max(1, min(4, c // 2))),
        (["--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() * 2}"], True, lambda c: 1),
        ([], False, lambda c: 1),
    ],
)
def test_the_automatic_count_shares_the_cores_among_local_workers(args, local, expected):
    assert item_threads(0, PipelineOptions(args), local) == expected(_cores())
    assert item_threads(3, PipelineOptions(args), local) == 3  # asked for: as asked


# ---- whole runs: the same bytes whatever the thread count --------------------------------------------


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i in range(16):
        (tmp_path / f"i{i}.png").write_bytes(_png(i) if i != 5 else b"not an image")
        rows.append(
            {"id": f"r{i}", "image": str(tmp_path / f"i{i}.png"), "text": f"caption {i}", "patient_id": f"p{i}"}
        )
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(m)


def _outputs(out):
    files = {}
    for f in sorted(glob.glob(os.path.join(out, "**"), recursive=True)):
        if os.path.isfile(f) and not f.endswith("summary.json"):
            files[os.path.relpath(f, out)] = open(f, "rb").read()
    return files


def test_outputs_are_byte_identical_with_one_thread_and_several(manifest, tmp_path):
    common = ["--input", manifest, "--split_salt", "s", "--val_fraction", "0.25", "--max_error_fraction", "0.5"]
    runs = {
        "1": ["--item_threads", "1"],
        "3": ["--item_threads", "3"],
        "2x2": [
            "--item_threads",
            "2",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--min_inputs_per_worker",
            "0",
        ],
    }
    summaries, outputs = {}, {}
    for name, extra in runs.items():
        out = str(tmp_path / f"out{name}")
        summaries[name] = run_pipeline("images", [*common, "--output_dir", out, *extra])
        outputs[name] = _outputs(out)
    assert outputs["1"] == outputs["3"] == outputs["2x2"]
    assert any(name.startswith("errors/") for name in outputs["1"])
    for s in summaries.values():
        assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (16, 15, 1, True)
    assert [s["config"]["item_threads"] for s in summaries.values()] == [1, 3, 2]


# ---- local worker processes only where they pay ------------------------------------------------------


@pytest.mark.parametrize(
    "args, inputs, per_worker, in_process",
    [
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 10, 500, True),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 999, 500, True),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 1000, 500, False),
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 0, 500, False),  # discovery
        (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 10, 0, False),  # asked to keep
        (["--direct_running_mode=multi_processing", "--direct_num_workers=1"], 1, 4, False),
        ([], 10, 500, False),
    ],
)
def test_worker_processes_start_only_where_each_gets_enough_inputs(args, inputs, per_worker, in_process):
    from apache_beam.options.pipeline_options import DirectOptions

    from medprep.pipelines.cli.runner import in_process_when_small

    options = PipelineOptions(args)
    before = options.view_as(DirectOptions).direct_running_mode
    reason = in_process_when_small(options, inputs, per_worker)
    direct = options.view_as(DirectOptions)
    if in_process:
        assert (direct.direct_running_mode, direct.direct_num_workers) == ("in_memory", 1)
        assert reason == (
            f"{inputs} inputs: running in-process instead of starting 2 worker processes, which pay from "
            f"{per_worker} inputs each (--min_inputs_per_worker 0 starts them anyway)"
        )
    else:
        assert reason == "" and direct.direct_running_mode == before


def test_a_small_run_asked_for_workers_runs_in_process_and_says_so(manifest, tmp_path, caplog):
    out = str(tmp_path / "o")
    args = ["--input", manifest, "--output_dir", out, "--split_salt", "s", "--max_error_fraction", "0.5"]
    with caplog.at_level("WARNING", logger="medprep.pipelines.cli.runner"):
        s = run_pipeline("images", [*args, "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert "16 inputs: running in-process instead of starting 2 worker processes" in caplog.text
    assert s["config"]["min_inputs_per_worker"] == 500  # images' own (registry), from the default -1
    assert s["config"]["item_threads"] == item_threads(0, PipelineOptions([]), True)  # in-process threads


def test_volumes_prepared_in_threads_give_the_same_records_and_slice_counts(tmp_path):
    from medprep.pipelines.cli.main import run_pipeline_with_result
    from medprep.pipelines.graphs.metrics import query_metrics, totals
    from medprep.samples import write_series

    rows = []
    for k in range(4):
        write_series(str(tmp_path / f"ct{k}"), 8 + k, series=1, patient=k + 1)
        rows.append({"id": f"s{k}", "image": str(tmp_path / f"ct{k}"), "text": f"ct {k}", "patient_id": f"p{k}"})
    (tmp_path / "ct2" / "broken.dcm").write_bytes(b"DICM" * 10)  # a file that is not one: skipped, counted
    manifest = tmp_path / "v.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs, counts = {}, {}
    for threads in ("1", "4"):
        out = str(tmp_path / f"out{threads}")
        args = ["--input", str(manifest), "--output_dir", out, "--split_salt", "s", "--max_slices", "6"]
        summary, result = run_pipeline_with_result("volumes", [*args, "--item_threads", threads])
        assert (summary["inputs"], summary["errors"], summary["reconciled"]) == (4, 0, True)
        outputs[threads] = _outputs(out)
        counts[threads] = totals(query_metrics(result)[0])
    assert outputs["1"] == outputs["4"]
    assert counts["1"]["slices_done"] == counts["4"]["slices_done"] == 4 * 6
    assert counts["1"]["inputs"] == counts["4"]["inputs"] == 4
