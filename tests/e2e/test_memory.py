"""Memory bounds at full scale: a 100,000 x 80,000 slide and 1,000-slice CT and MR series, each run by
`medprep` in a fresh process (the DirectRunner in-process: runner and worker in one) under 2 GiB."""

import json

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
