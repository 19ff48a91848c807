"""`medprep verify` and `inspect` on a gs:// output, read in place (no local copy of the output) through a local
GCS emulator (tests/gcs_emulator.py)."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gcs_emulator import upload_folder  # tests/gcs_emulator.py

BUCKET = "medprep-verify"


@pytest.fixture(scope="module")
def gcs():
    from gcs_emulator import emulator_bucket

    with emulator_bucket(BUCKET) as bucket:
        yield bucket


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    from medprep.pipelines.cli.main import run_pipeline

    d = tmp_path_factory.mktemp("vgcs")
    os.makedirs(d / "in" / "MRN-31337")
    rng = np.random.default_rng(5)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(d / "in" / "MRN-31337" / f"x{i}.png")
        rows.append({"image": f"MRN-31337/x{i}.png", "patient_id": f"PAT-00{i}", "text": f"case {i}"})
    rows.append({"image": "MRN-31337/gone.png", "patient_id": "PAT-099", "text": "gone"})
    (d / "in" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(d / "out")
    args = ["--input", str(d / "in" / "m.jsonl"), "--output_dir", out, "--image_size", "64"]
    s = run_pipeline("images", [*args, "--test_fraction", "0.5", "--max_error_fraction", "1"])
    assert (s["examples"], s["errors"]) == (6, 1)
    return out


def test_verify_and_inspect_read_a_gcs_output_in_place(gcs, local_output, monkeypatch):
    import medprep.pipelines.io.outputs as outputs
    from medprep.pipelines.tools.inspect import inspect
    from medprep.pipelines.tools.verify import verify

    def no_copy(*_):
        raise AssertionError("the output was copied to a local folder")

    monkeypatch.setattr(outputs, "localize", no_copy, raising=False)
    upload_folder(gcs, local_output, "out")
    remote = f"gs://{BUCKET}/out"
    problems, facts = verify(remote)
    assert problems == [] and facts == verify(local_output)[1]
    assert (facts["examples"], facts["errors"], facts["formats"]) == (6, 1, ["arrayrecord", "parquet"])
    assert facts["phi_values_by_kind"] == {"manifest_patient_id": 7, "path_component": 8, "url_credential": 0}

    assert inspect(remote) == f"{remote}/report.html"
    page = gcs.blob("out/report.html").download_as_bytes().decode()
    assert 'id="count-examples">6<' in page and "<h2>Errors (1)</h2>" in page
    assert gcs.blob("out/preview.png").exists()

    summary = json.loads(gcs.blob("out/summary.json").download_as_bytes())
    shard = next(f["path"] for f in summary["files"] if f.get("format") == "parquet")
    table = pq.read_table(io.BytesIO(gcs.blob(f"out/{shard}").download_as_bytes()))
    rows = table.to_pylist()
    rows[0]["text"] = "seen at MRN-31337 by DOE^JANE"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), buf)
    gcs.blob(f"out/{shard}").upload_from_string(buf.getvalue())
    eid = rows[0]["example_id"]
    assert sorted(verify(remote)[0]) == [
        f"identifier 'path component of manifest row 1 image' found in record {eid} field text",
        f"identifier pattern 'DICOM person name' found in record {eid} field text",
        f"identifier pattern 'labelled record number' found in record {eid} field text",
    ]
    gcs.blob(f"out/{shard}").delete()
    assert f"missing shard {shard}" in verify(remote)[0]
