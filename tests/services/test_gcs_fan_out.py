"""The fan-out's staged images on gs:// (a local GCS emulator): parts uploaded where they are rendered, read back
by range for assembly, gone once the run is committed; the shards are those of a local run."""

import json
import os

import pytest

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import synthetic_slide_rgb, write_series, write_svs

BUCKET = "medprep-fanout-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    from gcs_emulator import emulator_bucket

    with emulator_bucket(BUCKET) as bucket:
        yield bucket


def _shards(read, names):
    return {name: read(name) for name in names if name.split("/")[0] in ("arrayrecord", "parquet", "errors")}


@pytest.mark.parametrize("pipeline", ["volumes", "slides"])
def test_fan_out_to_gcs_matches_local_and_leaves_no_parts(gcs, tmp_path, demo_model_bytes, monkeypatch, pipeline):
    import medprep.pipelines.graphs.volumes as volumes

    monkeypatch.setattr(volumes, "fan_out_pays", lambda *a: True)  # volumes fan out in-process too
    (tmp_path / "demo.model").write_bytes(demo_model_bytes)
    if pipeline == "volumes":
        write_series(str(tmp_path / "ct"), 12)
        row = {"id": "v", "image": str(tmp_path / "ct"), "text": "CT.", "patient_id": "P"}
        opts = ["--slice_selection", "all", "--granularity", "series,slice", "--image_size", "128"]
    else:
        write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(2048, 1536, seed=4), mpp=1.0)
        row = {"id": "w", "image": str(tmp_path / "s.svs"), "text": "Tissue.", "patient_id": "P"}
        opts = ["--patch_size", "224", "--image_size", "224", "--max_patches", "12", "--granularity", "slide,patch"]
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    args = ["--input", str(tmp_path / "m.jsonl"), "--tokenizer", str(tmp_path / "demo.model"), "--split_salt", "s"]
    local = tmp_path / "out"
    s_local = run_pipeline(pipeline, [*args, *opts, "--output_dir", str(local)])
    s_gcs = run_pipeline(pipeline, [*args, *opts, "--output_dir", f"gs://{BUCKET}/{pipeline}"])
    assert s_gcs["examples"] == s_local["examples"] > 2 and s_gcs["errors"] == 0
    blobs = {b.name[len(pipeline) + 1 :]: b for b in gcs.list_blobs(prefix=pipeline + "/")}
    remote = _shards(lambda name: blobs[name].download_as_bytes(), blobs)
    files = [os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs]
    assert remote == _shards(lambda name: (local / name).read_bytes(), files) and remote
    assert not [name for name in blobs if name.startswith(".") or name.endswith(".images")]
