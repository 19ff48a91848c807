"""`make demo` (medprep demo --output_dir demo_out) from a fresh directory, relative output path included, with
only what `make demo` installs (medprep[demo]): every test-only package is made unimportable."""

import json
import subprocess
import sys

BLOCKED = ("torch", "transformers", "datasets", "grain", "hypothesis", "pytest", "gcp_storage_emulator", "pydicom_data")
RUN_DEMO = (
    "import sys, importlib.abc\n"
    f"BLOCKED = {BLOCKED!r}\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in BLOCKED:\n"
    "            raise ImportError(f'{name} is a test-only package')\n"
    "sys.meta_path.insert(0, Block())\n"
    "from medprep.pipelines.cli.main import main\n"
    "sys.exit(main(['demo', '--output_dir', 'demo_out']))\n"
)


def test_demo_with_a_relative_output_dir_and_no_test_extra(tmp_path):
    proc = subprocess.run([sys.executable, "-c", RUN_DEMO], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {}
    for name in ("images", "volumes", "slides"):
        s = json.load(open(tmp_path / "demo_out" / name / "summary.json"))
        got[name] = (s["inputs"], s["examples"], s["errors"], s["reconciled"])
    # two image rows are broken on purpose (a truncated DICOM, a missing file); slides: slide + patch records
    assert got == {"images": (13, 11, 2, True), "volumes": (3, 3, 0, True), "slides": (2, 6, 0, True)}
    errors = [json.loads(x) for x in open(tmp_path / "demo_out" / "images" / "errors" / "errors-00000-of-00001.jsonl")]
    assert sorted(e["stage"] for e in errors) == ["decode", "read"]
