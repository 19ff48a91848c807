"""Run a pipeline graph with the user's Beam options."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from medprep.pipelines.graphs.metrics import query_metrics
from medprep.pipelines.graphs.progress import ProgressBar

_LOG = logging.getLogger(__name__)


def check_beam_args(beam_args: list[str]) -> None:
    """Fail on options neither medprep nor Beam knows (Beam would silently drop them)."""
    if not beam_args:
        return  # a parser of every Beam option costs ~0.1 s at start-up: only built when there is one to check
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    if unknown:
        from medprep.pipelines.cli.options import OptionError

        raise OptionError(unknown[0], "unrecognized option (neither a medprep nor a Beam option)")


def make_runner(options: PipelineOptions):
    """DirectRunner (or no runner) -> the FnApiRunner it would use for batch, skipping the
    Prism attempt that needs a download; any other runner name is passed to Beam as is."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


MAX_AUTO_ITEM_THREADS = 4  # past this, memory (inputs in flight) grows faster than the gain


def item_threads(requested: int, options: PipelineOptions, local: bool) -> int:
    """Inputs one worker process prepares at once: `requested` if set (> 0); else on the local runner the
    cores this process may use shared among its worker processes (at most MAX_AUTO_ITEM_THREADS), 1 on
    other runners (which run a process per vCPU)."""
    if requested > 0:
        return requested
    if not local:
        return 1
    direct = options.view_as(DirectOptions)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = 1
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        workers = direct.direct_num_workers or cores  # 0: Beam starts one per core
    return max(1, min(MAX_AUTO_ITEM_THREADS, cores // max(1, workers)))


def in_process_when_small(options: PipelineOptions, inputs: int, per_worker: int) -> str:
    """Turn local worker processes off (in place) when they would get fewer than `per_worker` of the run's
    `inputs` each (0 inputs: not known at start-up, as with discovery; per_worker 0: never). Returns the
    reason, or "" when the options stay as they are."""
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing" or not inputs or per_worker <= 0:
        return ""
    workers = direct.direct_num_workers or os.cpu_count() or 1
    if workers <= 1 or inputs >= per_worker * workers:
        return ""
    direct.direct_running_mode, direct.direct_num_workers = "in_memory", 1
    return (
        f"{inputs} inputs: running in-process instead of starting {workers} worker processes, which pay "
        f"from {per_worker} inputs each (--min_inputs_per_worker 0 starts them anyway)"
    )


def run(build, config, beam_args: list[str], wait: bool = True):
    """Build the graph with `build(pipeline, config)`, run it, wait (unless told not to), return the result.

    Local runs (the DirectRunner, in-process or multi_processing) show a progress bar on stderr.
    """
    options = PipelineOptions(beam_args)
    runner = make_runner(options)
    local = not isinstance(runner, str)
    if local and hasattr(config, "min_inputs_per_worker"):  # the record pipelines' (not embed's)
        reason = in_process_when_small(options, config.expected_inputs, config.min_inputs_per_worker)
        if reason:
            _LOG.warning(reason)
    with tempfile.TemporaryDirectory(prefix="medprep-progress-") as folder:
        if hasattr(config, "item_threads"):  # the record pipelines' (embed forms its own batches)
            config = dataclasses.replace(config, item_threads=item_threads(config.item_threads, options, local))
        if local:
            config = dataclasses.replace(config, progress_file=os.path.join(folder, "done"))
        pipeline = beam.Pipeline(runner=runner, options=options)
        build(pipeline, config)
        with ProgressBar(config.progress_file, config.expected_inputs) if local else contextlib.nullcontext():
            result = pipeline.run()
            if not wait and not local:
                _LOG.warning("submitted; not waiting for the job (it commits its outputs when it succeeds)")
                return result
            result.wait_until_finish()
    log_metrics(result)
    return result


def log_metrics(result) -> None:
    """Log the run's medprep counters and latency distributions at INFO."""
    counters, distributions = query_metrics(result)
    for (step, name), value in sorted(counters.items()):
        _LOG.info("%s %s = %s", step, name, value)
    for (step, name), (count, total, _, high) in sorted(distributions.items()):
        _LOG.info("%s %s: n=%d mean=%.1f max=%d", step, name, count, total / count, high)
