"""`make demo` (medprep demo --output_dir demo_out) from a fresh directory, relative output path included."""
import json

from medprep.pipelines.cli.main import main


def test_demo_with_a_relative_output_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--output_dir", "demo_out"]) == 0
    got = {}
    for name in ("images", "volumes", "slides"):
        s = json.load(open(tmp_path / "demo_out" / name / "summary.json"))
        got[name] = (s["inputs"], s["examples"], s["errors"], s["reconciled"])
    # two image rows are broken on purpose (a truncated DICOM, a missing file); slides: slide + patch records
    assert got == {"images": (13, 11, 2, True), "volumes": (3, 3, 0, True), "slides": (2, 6, 0, True)}
    errors = [json.loads(x) for x in open(tmp_path / "demo_out" / "images" / "errors" / "errors-00000-of-00001.jsonl")]
    assert sorted(e["stage"] for e in errors) == ["decode", "read"]
