"""Beam metrics of medprep (namespace 'medprep'): counters and per-stage latency distributions.

Counters: inputs, inputs_failed, examples, images, image_bytes, errors_<stage>, dicomweb_retries.
Distributions (milliseconds): item_ms (one input, end to end) and <stage>_ms for the stages of
medprep.transforms.errors.STAGES an input went through (exclusive times); image_kb per output image.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "medprep"


class PipelineMetrics:
    """Metric cells of one DoFn instance, created on first use."""

    def __init__(self):
        self._counters: dict = {}
        self._distributions: dict = {}

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            cell = self._counters.get(name)
            if cell is None:
                cell = self._counters[name] = Metrics.counter(NAMESPACE, name)
            cell.inc(n)

    def observe(self, name: str, value: int) -> None:
        cell = self._distributions.get(name)
        if cell is None:
            cell = self._distributions[name] = Metrics.distribution(NAMESPACE, name)
        cell.update(int(value))

    def stage_times(self, times: dict[str, float]) -> None:
        """Record {stage: seconds} as <stage>_ms distributions."""
        for stage, seconds in times.items():
            self.observe(f"{stage}_ms", round(seconds * 1000))

    def example(self, record: dict) -> None:
        """Count one output example, its images and their bytes."""
        self.inc("examples")
        self.inc("images", len(record["images"]))
        for data in record["images"]:
            self.inc("image_bytes", len(data))
            self.observe("image_kb", len(data) // 1024)


def query_metrics(result) -> tuple[dict, dict]:
    """A finished run's medprep metrics: ({(step, name): count}, {(step, name): (n, sum, min, max)})."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # some runners report no metrics
        return {}, {}
    counters = {(c.key.step, c.key.metric.name): c.committed or c.attempted or 0 for c in found["counters"]}
    distributions = {}
    for d in found["distributions"]:
        value = d.committed or d.attempted
        if value and value.count:
            distributions[(d.key.step, d.key.metric.name)] = (value.count, value.sum, value.min, value.max)
    return counters, distributions


def totals(counters: dict) -> dict[str, int]:
    """Counters summed over steps: {name: total}."""
    out: dict[str, int] = {}
    for (_, name), value in counters.items():
        out[name] = out.get(name, 0) + value
    return out


def format_latency(result) -> str:
    """A short table of per-stage latency (ms: n, mean, max) for the end of a local run."""
    _, distributions = query_metrics(result)
    lines = [f"medprep latency (ms)  {'step':<14} {'stage':<16} {'n':>7} {'mean':>8} {'max':>7}"]
    for (step, name), (count, total, _, high) in sorted(distributions.items()):
        if name.endswith("_ms"):
            stage = name[:-3]
            lines.append(f"{'':<21} {step.split('/')[0]:<14} {stage:<16} {count:>7} {total / count:>8.1f} {high:>7}")
    return "\n".join(lines)
