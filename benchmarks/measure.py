"""Run `medprep …` in a fresh process and measure it: wall time of the run and peak memory.

Peak memory is VmHWM (the high-water mark of the process's own memory, reset by exec) of the
process that runs the CLI and, polled every 0.1 s, of every process below it (Beam's
multi_processing workers). getrusage's ru_maxrss is not used: Linux carries it across fork and
exec, so a child of a large process would report its parent's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_WRAPPER = """
import json, os, sys, threading, time

def hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

def descendants(root):
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    parent[int(name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found

peak = {"workers_kb": 0}
done = threading.Event()

def poll():
    me = os.getpid()
    while not done.wait(0.1):
        for pid in descendants(me):
            peak["workers_kb"] = max(peak["workers_kb"], hwm_kb(pid))

threading.Thread(target=poll, daemon=True).start()
start = time.perf_counter()
if os.environ.get("MEDPREP_BENCH_TIMELINE"):  # the run's phases and stages too (benchmarks.timeline)
    from benchmarks.timeline import main as timeline_main
    timeline = timeline_main(sys.argv[1:])
    rc = timeline["rc"]
else:
    from medprep.pipelines.cli.main import main
    timeline, rc = None, main(sys.argv[1:])
seconds = time.perf_counter() - start
done.set()
print(json.dumps({"rc": rc, "seconds": seconds, "self_kb": hwm_kb(os.getpid()), "children_kb": peak["workers_kb"],
                  "timeline": timeline}))
"""


def run_measured(*argv: str, timeout: float = 3600, timeline: bool = False) -> tuple[dict, dict]:
    """(the CLI's printed counts, {rc, seconds, self_kb, children_kb, timeline}); raises if the run failed.

    With `timeline`, the run goes through benchmarks.timeline and `timeline` holds its phases and stages.
    """
    env = dict(os.environ, MEDPREP_BENCH_TIMELINE="1" if timeline else "")
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True, timeout=timeout, env=env
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"medprep {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-2]), json.loads(lines[-1])
