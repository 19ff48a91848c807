"""Where the wall time of one `medprep` run goes: start-up, graph, each fused stage of the local runner, commit.

Runs the CLI in this process with a few functions wrapped (nothing in medprep changes):

    python -m benchmarks.timeline images --input m.jsonl --output_dir out --overwrite [beam options]

prints one JSON line: {"phases": [[name, seconds], …], "stages": [[fused stage, seconds, bundles], …],
"item_ms": {stage: total ms over the run}, "seconds": wall time}. `phases` covers the whole run:

- import: Python start to the CLI module imported (Beam, pydicom, numpy…);
- options: parsing, validation, manifest and tokenizer checks, up to the graph's construction;
- graph: building the Beam graph;
- runner start: from pipeline.run to the first bundle (translation to the runner API, fusion, workers);
- stages: the runner's bundles, stage by stage (`stages`; with multi_processing the time the runner
  waits for its workers);
- runner end: after the last bundle (metrics, worker shutdown);
- commit and summary: moving the staging folder into place, reading summary.json.

`item_ms` sums the per-item stage distributions (read, decode, transform, encode, text; for volumes
also the slices) that the pipeline's own metrics record, so the per-item stage can be split further.
"""

from __future__ import annotations

import json
import sys
import time

START = time.perf_counter()


def main(argv: list[str]) -> dict:
    marks: list[tuple[str, float]] = [("start", 0.0)]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter() - START))

    from medprep.pipelines.cli import main as cli

    mark("import")
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    stages: dict[str, list[float]] = {}
    pipeline_init, pipeline_run, execute = (
        beam.Pipeline.__init__,
        beam.Pipeline.run,
        fn_runner.FnApiRunner._execute_bundle,
    )

    def init(self, *args, **kwargs):
        mark("options")
        pipeline_init(self, *args, **kwargs)

    def run(self, *args, **kwargs):
        mark("graph")
        try:
            return pipeline_run(self, *args, **kwargs)
        finally:
            mark("stages")

    def execute_bundle(self, context, manager, bundle_input):
        if not stages:
            mark("runner start")
        t = time.perf_counter()
        try:
            return execute(self, context, manager, bundle_input)
        finally:
            entry = stages.setdefault(manager.stage.name, [0.0, 0])
            entry[0] += time.perf_counter() - t
            entry[1] += 1
            marks.append(("last bundle", time.perf_counter() - START))

    beam.Pipeline.__init__, beam.Pipeline.run = init, run
    fn_runner.FnApiRunner._execute_bundle = execute_bundle
    results: list = []
    run_with_result = cli.run_pipeline_with_result

    def keep_result(*args, **kwargs):
        summary, result = run_with_result(*args, **kwargs)
        results.append(result)
        return summary, result

    cli.run_pipeline_with_result = keep_result
    rc = cli.main(argv)
    mark("commit and summary")
    phases = _phases(marks)
    return {
        "rc": rc,
        "seconds": marks[-1][1],
        "phases": phases,
        "stages": sorted(([name, sec, n] for name, (sec, n) in stages.items()), key=lambda s: -s[1]),
        "item_ms": _item_ms(results[0]) if results else {},
    }


def _phases(marks: list[tuple[str, float]]) -> list[list]:
    """Consecutive phases from the marks: the runner's stages end at the last bundle, then 'runner end'."""
    at = {}
    for name, t in marks:
        at[name] = t if name == "last bundle" or name not in at else at[name]
    order = ["import", "options", "graph", "runner start", "last bundle", "stages", "commit and summary"]
    labels = {"last bundle": "stages", "stages": "runner end"}
    out, before = [], 0.0
    for name in order:
        if name in at:
            out.append([labels.get(name, name), round(at[name] - before, 3)])
            before = at[name]
    return out


def _item_ms(result) -> dict[str, float]:
    """{distribution name: total ms} of the run's per-item and per-unit stage times (summed over steps)."""
    from medprep.pipelines.graphs.metrics import query_metrics

    _, distributions = query_metrics(result)
    totals: dict[str, float] = {}
    for (_, name), (_, total, _, _) in distributions.items():
        if name.endswith("_ms"):
            totals[name[:-3]] = totals.get(name[:-3], 0) + total
    return totals


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
