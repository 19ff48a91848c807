"""`medprep verify` bounded and hands-off: memory that does not grow with the dataset (a fresh process, VmHWM on
two sizes), and no source file ever opened (FIFOs named by the manifest and errors/ would block a reader)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import run_pipeline

ARGS = ["--split_salt", "bounded", "--image_size", "256", "--max_error_fraction", "1"]
VERIFY = """
import json, sys
from medprep.pipelines.tools.verify import verify
problems, facts = verify(sys.argv[1])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"problems": problems, "examples": facts.get("examples"), "hwm_kib": hwm}))
"""
# The control: what a reader that holds every record (images included) peaks at, in the same kind of process.
HOLD_ALL = """
import json, sys
import medprep.pipelines.tools.verify
from medprep.schemas import read_records
held = list(read_records(sys.argv[1] + "/parquet")) + list(read_records(sys.argv[1] + "/arrayrecord"))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"records": len(held), "hwm_kib": hwm}))
"""


def _run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _noise_dataset(folder, n: int) -> str:
    """n rows, each its own 256x256 RGB noise image (PNG does not compress noise: ~190 KB an image, so image
    bytes dominate everything else a record holds), one patient per row."""
    rng = np.random.default_rng(n)
    os.makedirs(folder / "in")
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / "in" / f"n{i:04d}.png")
        rows.append({"id": f"r{i}", "image": f"n{i:04d}.png", "patient_id": f"P{i:05d}", "text": f"case {i}"})
    manifest = folder / "in" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(folder / "out")
    s = run_pipeline("images", ["--input", str(manifest), "--output_dir", out, *ARGS])
    assert s["examples"] == n
    return out


@pytest.mark.e2e
def test_verify_memory_does_not_grow_with_the_dataset(tmp_path):
    """verify on 40 and on 800 records (~15 MB and ~300 MB of images over both formats): the peak stays within
    1.3x, while a reader holding the records grows well past that bound (so the sizes do test it)."""
    small, large = _noise_dataset(tmp_path / "small", 40), _noise_dataset(tmp_path / "large", 800)
    a, b = _run(VERIFY, small), _run(VERIFY, large)
    assert (a["problems"], a["examples"], b["problems"], b["examples"]) == ([], 40, [], 800)
    held_a, held_b = _run(HOLD_ALL, small), _run(HOLD_ALL, large)
    assert (held_a["records"], held_b["records"]) == (80, 1600)
    print(
        f"VmHWM verify: {a['hwm_kib']} KiB (40) {b['hwm_kib']} KiB (800); holding records: "
        f"{held_a['hwm_kib']} KiB, {held_b['hwm_kib']} KiB"
    )
    assert held_b["hwm_kib"] > 1.5 * held_a["hwm_kib"]
    assert b["hwm_kib"] <= 1.3 * a["hwm_kib"]


OPENS = """
import json, sys
watched = sys.argv[2]
opened = []


def hook(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.abspath(args[0]).startswith(watched):
        opened.append(os.path.abspath(args[0]))


import os
sys.addaudithook(hook)
from medprep.pipelines.tools.verify import verify
problems, facts = verify(sys.argv[1])
print(json.dumps({"problems": problems, "opened": sorted(set(opened)), "facts": facts}))
"""


def test_verify_never_opens_a_source_so_fifos_in_the_manifest_and_errors_cannot_block_it(tmp_path):
    """After the run, the manifest's image and the missing file an error line names become FIFOs (opening one
    for reading blocks until a writer comes). verify finishes, opens nothing under the input folder but the
    manifest (an audit hook records every open), and still finds an identifier planted in a record."""
    inp = tmp_path / "in"
    os.makedirs(inp / "MRN-55555")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        inp / "MRN-55555" / "scan_01.png"
    )
    rows = [
        {"image": "MRN-55555/scan_01.png", "patient_id": "PAT-1234567", "text": "clear"},
        {"image": "MRN-55555/missing_02.png", "patient_id": "PAT-7654321", "text": "gone"},
    ]
    manifest = inp / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "out")
    s = run_pipeline("images", ["--input", str(manifest), "--output_dir", out, "--formats", "parquet", *ARGS])
    assert (s["examples"], s["errors"]) == (1, 1)
    os.remove(inp / "MRN-55555" / "scan_01.png")
    os.mkfifo(inp / "MRN-55555" / "scan_01.png")
    os.mkfifo(inp / "MRN-55555" / "missing_02.png")
    line = json.loads(open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl")).readline())
    assert line["ref"].endswith("MRN-55555/missing_02.png")

    got = _run(OPENS, out, str(inp))  # a blocked open would hit the 600 s timeout of _run
    assert got["problems"] == [] and got["opened"] == [str(manifest)]
    assert got["facts"]["phi_values_by_kind"] == {"manifest_patient_id": 2, "path_component": 3, "url_credential": 0}

    import pyarrow as pa
    import pyarrow.parquet as pq

    (name,) = os.listdir(os.path.join(out, "parquet"))
    table = pq.read_table(os.path.join(out, "parquet", name))
    rows_out = [dict(r, label="scan_01.png", text="DOB: 1960-01-01") for r in table.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows_out, schema=table.schema), os.path.join(out, "parquet", name))
    eid = rows_out[0]["example_id"]
    got = _run(OPENS, out, str(inp))
    assert got["opened"] == [str(manifest)]
    assert sorted(got["problems"]) == [
        f"identifier 'path component of manifest row 1 image' found in record {eid} field label",
        f"identifier pattern 'labelled birth date' found in record {eid} field text",
    ]
