"""Run a pipeline graph with the user's Beam options."""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

_LOG = logging.getLogger(__name__)


def check_beam_args(beam_args: list[str]) -> None:
    """Fail on options neither medprep nor Beam knows (Beam would silently drop them)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    if unknown:
        from pipelines.options import OptionError

        raise OptionError(unknown[0], "unrecognized option (neither a medprep nor a Beam option)")


def make_runner(options: PipelineOptions):
    """DirectRunner (or no runner) -> the FnApiRunner it would use for batch, skipping the
    Prism attempt that needs a download; any other runner name is passed to Beam as is."""
    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return name


def run(build, config, beam_args: list[str]):
    """Build the graph with `build(pipeline, config)`, run it, wait, return the result."""
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    build(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    _log_counters(result)
    return result


def _log_counters(result) -> None:
    """Log the run's Beam counters (examples, errors, DICOMweb retries) at INFO."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # some runners report no metrics
        return
    for c in counters:
        _LOG.info("%s/%s = %s", c.key.metric.namespace, c.key.metric.name, c.committed or c.attempted)
