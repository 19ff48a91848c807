"""Dataflow flex-template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

The template launcher calls `python flex_main.py --pipeline=images --input=… --output_dir=… …`
with every template parameter as --name=value. The launcher must exit once the job is
submitted, so the job commits its outputs itself, as its last step.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medprep.pipelines.cli.main import PIPELINES, run_pipeline_with_result
from medprep.pipelines.cli.options import OptionError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="flex_main", add_help=False)
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), required=True)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        run_pipeline_with_result(args.pipeline, rest, wait=False)
    except OptionError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
