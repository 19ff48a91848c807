"""Run `medprep …` in a fresh process and measure it: wall time of the run and peak memory."""
from __future__ import annotations

import json
import subprocess
import sys

# Runs the CLI, then prints its exit code, the run's seconds and the peak RSS of itself and of
# its worker processes (multi_processing), in KiB.
_WRAPPER = """
import json, resource, sys, time
from pipelines.cli import main
start = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start,
                  "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_measured(*argv: str, timeout: float = 3600) -> tuple[dict, dict]:
    """(the CLI's printed counts, {rc, seconds, self_kb, children_kb}); raises if the run failed."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"medprep {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-2]), json.loads(lines[-1])
