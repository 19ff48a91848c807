"""Memory bounds at full scale: a 100,000 x 80,000 slide and 1,000-slice CT and MR series, each run by
`medprep` in a fresh process (the DirectRunner in-process: runner and worker in one) under 2 GiB; and
memory per run: the peak of the runner and of its workers does not grow with the number of images."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks.measure import run_measured
from medprep.samples import ct_body_slice, write_large_svs, write_series

LIMIT_KB = 2 * 1024 * 1024


def test_100k_by_80k_slide_within_2_gib(tmp_path):
    slide = write_large_svs(str(tmp_path / "huge.svs"), 100_000, 80_000, mpp=0.25)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "huge", "image": slide, "text": "tissue", "patient_id": "p1"}) + "\n")
    counts, peak = run_measured("slides", "--input", str(manifest), "--output_dir", str(tmp_path / "o"))
    # 896-px patches at 1.0 µm/px (level 1, 4x) over the tissue ellipse: 79 grid cells hold tissue
    assert counts == {"inputs": 1, "examples": 1, "images": 79, "errors": 0, "reconciled": True}
    assert peak["self_kb"] < LIMIT_KB and peak["children_kb"] < LIMIT_KB, peak


def test_1000_slice_ct_and_mr_series_within_2_gib(tmp_path):
    n = 1000
    write_series(str(tmp_path / "ct"), n, values=lambda k: ct_body_slice(k, n, 512), spacing=0.5)
    write_series(
        str(tmp_path / "mr"),
        n,
        modality="MR",
        spacing=0.5,
        series=2,
        values=lambda k: (ct_body_slice(k, n, 512) + 1024).clip(0, 4000),
    )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": m, "image": str(tmp_path / m), "text": m, "patient_id": m}) + "\n" for m in ("ct", "mr")
        )
    )
    counts, peak = run_measured(
        "volumes", "--input", str(manifest), "--output_dir", str(tmp_path / "o"), "--granularity", "series,slice"
    )
    # 85 slices per series (the default), one series record plus 85 slice records each; MR reads all
    # 1,000 slices for its range, one at a time
    assert counts == {"inputs": 2, "examples": 2 * 86, "images": 2 * 2 * 85, "errors": 0, "reconciled": True}
    assert peak["self_kb"] < LIMIT_KB and peak["children_kb"] < LIMIT_KB, peak


def _noise_images(folder, n_files: int, side: int) -> list[str]:
    """Incompressible RGB PNGs (noise): the output's image bytes are as large as the pixels, so they
    dominate everything else a run holds."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n_files):
        path = folder / f"noise{k}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=1)
        paths.append(str(path))
    return paths


def _peaks(tmp_path, n: int, images: list[str], *beam_args: str) -> dict:
    manifest = tmp_path / f"m{n}.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "image": images[i % len(images)], "text": f"report {i}", "patient_id": f"p{i}"})
            + "\n"
            for i in range(n)
        )
    )
    out = tmp_path / f"o{n}{len(beam_args)}"
    argv = ["--input", str(manifest), "--output_dir", str(out), "--image_size", "384", "--num_shards", "1"]
    counts, peak = run_measured("images", *argv, *beam_args)
    assert counts == {"inputs": n, "examples": n, "images": n, "errors": 0, "reconciled": True}
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no staging folder, no staged parts left
    shard = out / "arrayrecord" / "train-00000-of-00001.array_record"
    return {**peak, "output_mb": shard.stat().st_size / 2**20}


@pytest.mark.parametrize(
    "beam_args",
    [(), ("--direct_running_mode=multi_processing", "--direct_num_workers=2", "--min_inputs_per_worker", "0")],
)
def test_memory_does_not_grow_with_the_run(tmp_path, beam_args):
    # 100 and 400 noise images of 384² (~430 KiB each as PNG): 42 and 170 MiB of output in one forced
    # shard. Image bytes are staged in part files where they are made and shards are written streaming,
    # so four times the output leaves the peaks of the runner and of each worker where they were (measured:
    # ~400 MiB in-process from 64 to 509 MiB of output), where the local runner held ~3x its output
    # (the 60 -> 300 run grew 431 MiB before staging) and a forced shard was held whole while written.
    images = _noise_images(tmp_path, 6, 384)
    small, large = (_peaks(tmp_path, n, images, *beam_args) for n in (100, 400))
    assert large["output_mb"] > 3.9 * small["output_mb"] > 160
    for key in ("self_kb", "children_kb") if beam_args else ("self_kb",):
        grown_mb = (large[key] - small[key]) / 1024
        assert grown_mb < 60, (key, small, large)
        assert large[key] < LIMIT_KB
