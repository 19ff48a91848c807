"""The common tail (pipelines/graphs/dataset_writer.py): a job that commits itself (flex templates:
cfg.commit_in_pipeline) commits only once every output is in its staging folder."""

import dataclasses
import json
import os

import apache_beam as beam
import numpy as np
from PIL import Image

from medprep.pipelines.cli.main import run_pipeline_with_result
from medprep.pipelines.config import Config
from medprep.pipelines.graphs import images


def _manifest(tmp_path, n: int) -> str:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        path = tmp_path / f"i{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
        lines.append(json.dumps({"id": f"r{i}", "image": str(path), "text": f"report {i}", "patient_id": f"p{i}"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def test_the_commit_step_waits_for_shards_errors_and_preview(tmp_path):
    config = dataclasses.replace(
        Config(), input=_manifest(tmp_path, 2), output_dir=str(tmp_path / "o"), commit_in_pipeline=True
    )
    p = beam.Pipeline()
    images.build(p, config)
    found = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            found[node.full_label] = node

    p.visit(Visitor())
    waits = {s.pvalue.producer.full_label for s in found["Write/Commit"].side_inputs}
    assert waits == {"Write/Shards/AllShards", "Write/Errors/AllErrorFiles", "Write/PreviewWrite"}
    assert found["Write/Commit"].inputs[0].producer.full_label == "Write/Summary"


def test_a_job_committing_itself_on_two_workers_commits_the_preview(tmp_path):
    out = tmp_path / "o"
    argv = ["--input", _manifest(tmp_path, 6), "--output_dir", str(out), "--preview_count", "4"]
    beam_args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--min_inputs_per_worker", "0"]
    summary, _ = run_pipeline_with_result("images", argv + beam_args, wait=False)
    assert summary is None  # the launcher did not commit: the job did, as its last step
    left = sorted(os.listdir(out))
    assert left == ["arrayrecord", "errors", "parquet", "preview.png", "summary.json"]
    assert Image.open(out / "preview.png").size[0] > 0
    written = json.loads((out / "summary.json").read_text())
    assert (written["inputs"], written["examples"], written["errors"]) == (6, 6, 0)
    for f in written["files"]:
        assert os.path.exists(out / f["path"])
