"""`medprep` command line: the registered pipelines and tools (medprep.pipelines.registry), and demo; Beam
options pass through."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import NoReturn

from medprep.pipelines.cli.options import OptionError, add_pipeline_options, claim, config_from_args
from medprep.pipelines.cli.runner import check_beam_args, run
from medprep.pipelines.graphs.metrics import format_latency
from medprep.pipelines.registry import PIPELINES, TOOLS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medprep",
        description="Prepare medical images + text for MedGemma-style training. "
        "Unrecognized --options are Beam pipeline options (--runner, --direct_num_workers, …).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for spec in PIPELINES.values():
        add_pipeline_options(sub.add_parser(spec.name, help=spec.help), spec.groups)
    for tool in TOOLS.values():
        sub.add_parser(tool.name, help=tool.help, add_help=False)
    demo = sub.add_parser("demo", help="generate bundled samples and run the pipelines on them")
    demo.add_argument("--output_dir", default="demo_out", help="where to write samples and outputs (default demo_out)")
    return parser


def run_pipeline(name: str, argv: list[str]) -> dict:
    """Parse pipeline options, validate, run; returns summary.json's content."""
    return run_pipeline_with_result(name, argv)[0]


def run_pipeline_with_result(name: str, argv: list[str], wait: bool = True):
    """run_pipeline, also returning Beam's PipelineResult (its metrics: medprep.pipelines.graphs.metrics).

    wait=False (flex-template launchers, which must exit once the job is submitted): the job
    commits its own outputs as its last step, and the summary returned is None.
    """
    import dataclasses
    import importlib

    from medprep.pipelines.io.run_output import commit_run, read_summary

    parser = _parser()
    args, beam_args = parser.parse_known_args([name] + argv)
    check_beam_args(beam_args)
    config = config_from_args(args)
    if config.min_inputs_per_worker < 0:
        config = dataclasses.replace(config, min_inputs_per_worker=PIPELINES[name].inputs_per_worker)
    module = importlib.import_module(PIPELINES[name].module)
    lock = claim(config, name, job=not wait)
    if not wait:
        config = dataclasses.replace(config, commit_in_pipeline=True)
        try:
            return None, run(module.build, config, beam_args, wait=False)
        except BaseException:
            lock.release()  # the job never started (or failed where it runs locally): it will not release it
            raise
    with lock:
        try:
            result = run(module.build, config, beam_args)
        except Exception as exc:
            where = f"{config.output_dir} keeps its previous outputs (partial files are in {config.staging_dir})"
            setattr(exc, "medprep_note", where)  # noqa: B010  (add_note is Python 3.11+)
            raise
        commit_run(config.staging_dir, config.output_dir, config.max_error_fraction, config.max_errors, lock)
    return read_summary(config.output_dir), result


def one_line(exc: BaseException) -> str:
    """An exception as one line: the innermost message Beam wrapped, without the traceback."""
    import re

    from medprep.transforms.errors import strip_credentials

    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^(\w+\.)*\w+(Error|Exception): ", "", text)  # Beam's 'module.ItemError: ' prefixes
    return strip_credentials(text)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    from medprep.pipelines.io.run_output import ErrorBudgetExceeded, LockLost

    try:
        if argv and argv[0] in TOOLS:
            import importlib

            return importlib.import_module(TOOLS[argv[0]].module).main(argv[1:])
        if argv and argv[0] == "demo":
            from medprep.pipelines.tools.demo import main as demo_main

            args = _parser().parse_args(argv)
            return demo_main(args.output_dir)
        if argv and argv[0] in PIPELINES:
            verbose = "--verbose" in argv
            if not verbose:  # a failure is one line (below); Beam's own error logs repeat its traceback
                logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
            try:
                summary, result = run_pipeline_with_result(argv[0], argv[1:])
            except (OptionError, ErrorBudgetExceeded, LockLost):
                raise
            except Exception as exc:
                if verbose:
                    raise
                notes = getattr(exc, "medprep_note", "")
                print(f"medprep: error: the run failed: {one_line(exc)}", file=sys.stderr)
                print(
                    f"medprep: {notes} (--verbose for details)" if notes else "(--verbose for details)", file=sys.stderr
                )
                return 1
            print(format_latency(result), file=sys.stderr)
            print(json.dumps({k: summary[k] for k in ("inputs", "examples", "images", "errors", "reconciled")}))
            return 0 if summary["reconciled"] else 1
        _parser().parse_args(argv)  # prints usage / help
        return 2
    except OptionError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ErrorBudgetExceeded as exc:
        print(str(exc), file=sys.stderr, end="")
        return 3
    except LockLost as exc:
        print(f"medprep: error: {exc}", file=sys.stderr)
        return 3


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once atexit handlers have run and every stream is flushed, skipping
    the interpreter's teardown of the ~2,400 modules a Beam run loads (~0.6 s here). Nothing of medprep
    needs it: by then outputs are committed and closed, worker processes stopped, the lock released and
    temporary folders removed."""
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def console_main() -> NoReturn:
    """The `medprep` command: main() and a fast exit (an exception still ends the process as Python does)."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
