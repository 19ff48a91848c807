"""Start-up: nothing heavy is imported that a command or the inference API does not use (issue 14).

Each check runs in a fresh interpreter and looks at sys.modules, so what other tests imported does
not count. Beam itself imports pandas and pyarrow (apache_beam.typehints), so a pipeline run has
them; the inference API and the CLI's own modules must not add torch, transformers and the like.
"""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from medprep.samples import write_series

NEVER_FOR_A_RUN = ["torch", "transformers", "tokenizers", "datasets", "grain", "monai", "openslide", "tifffile"]


def _loaded(code: str, modules: list[str]) -> list[str]:
    """Which of `modules` are in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inference_api_imports_no_beam_arrow_or_torch():
    code = "from medprep import prepare_image, prepare_series, prepare_slide, to_model_input"
    assert _loaded(code, ["apache_beam", "pyarrow", "array_record", *NEVER_FOR_A_RUN]) == []


def test_cli_imports_no_model_libraries():
    assert _loaded("import medprep.pipelines.cli.main", [*NEVER_FOR_A_RUN, "SimpleITK", "nibabel", "wsidicom"]) == []


def test_images_and_volumes_runs_load_only_what_they_use(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    write_series(str(tmp_path / "ct"), 6, series=1, patient=1)
    (tmp_path / "images.jsonl").write_text(
        "".join(json.dumps({"image": str(tmp_path / f"p{i}.png"), "text": "t"}) + "\n" for i in range(2))
    )
    (tmp_path / "volumes.jsonl").write_text(json.dumps({"image": str(tmp_path / "ct"), "text": "ct"}) + "\n")
    for pipeline in ("images", "volumes"):
        argv = [pipeline, "--input", str(tmp_path / f"{pipeline}.jsonl"), "--output_dir", str(tmp_path / pipeline)]
        code = f"from medprep.pipelines.cli.main import main\nassert main({argv!r}) == 0"
        # medprep.transforms.scrub compiles its patterns on import: only a run with --scrub_text loads it
        unused = [*NEVER_FOR_A_RUN, "SimpleITK", "nibabel", "wsidicom", "medprep.transforms.scrub"]
        assert _loaded(code, unused) == [], pipeline


def test_the_command_exits_fast_with_its_code_and_every_line_written(tmp_path):
    """`python -m medprep` skips the interpreter's teardown (main.exit_now): its exit code and everything it
    printed to pipes (block-buffered) must still arrive, and the run must be committed."""
    for i in range(3):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"p{i}.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": str(tmp_path / f"p{i}.png"), "text": "t"}) + "\n" for i in range(3))
    )
    out = tmp_path / "out"

    def command(*args):
        return subprocess.run([sys.executable, "-m", "medprep", *args], capture_output=True, text=True, timeout=600)

    ok = command("images", "--input", str(manifest), "--output_dir", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1]) == {
        "inputs": 3,
        "examples": 3,
        "images": 3,
        "errors": 0,
        "reconciled": True,
    }
    assert "item" in ok.stderr  # the latency table, printed after the run
    assert json.loads((out / "summary.json").read_text())["examples"] == 3
    refused = command("images", "--input", str(manifest), "--output_dir", str(out), "--val_fractoin", "0.1")
    assert refused.returncode == 2 and "--val_fractoin" in refused.stderr
