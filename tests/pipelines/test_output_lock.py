"""One run per output folder: the lock, its heartbeat, stale locks, and two real runs started at once."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import main
from medprep.pipelines.io import output_lock
from medprep.pipelines.io.output_lock import LOCK, LockHeld, OutputLock, read_holder


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), np.uint8)).save(buf, "PNG")
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
        rows.append({"image": f"{i}.png", "text": f"t {i}", "patient_id": f"p{i}"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "m.jsonl")


def test_a_second_run_is_refused_naming_the_holder(tmp_path, manifest, capsys):
    out = str(tmp_path / "out")
    with OutputLock(out, "firstrun", "images").acquire():
        assert main(["images", "--input", manifest, "--output_dir", out]) == 2
        err = capsys.readouterr().err
        assert "--output_dir" in err and "locked by run firstrun" in err and f"pid {os.getpid()}" in err
        assert "wait for it to finish" in err
        # --break_lock does not take a live run's lock
        assert main(["images", "--input", manifest, "--output_dir", out, "--break_lock"]) == 2
        assert not os.path.exists(os.path.join(out, "summary.json"))
    assert not os.path.exists(os.path.join(out, LOCK))  # released
    assert main(["images", "--input", manifest, "--output_dir", out]) == 0
    assert not os.path.exists(os.path.join(out, LOCK))  # the run released its own


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_whose_process_is_gone_on_this_host_is_taken_over(tmp_path, manifest, caplog):
    """After a crash the next run (or recover) goes on by itself: the holder is certainly dead."""
    out = tmp_path / "out"
    out.mkdir()
    holder = output_lock.Holder("deadrun", socket.gethostname(), _dead_pid(), "images", 1.0, time.time())
    (out / LOCK).write_bytes(holder.to_json())
    assert main(["images", "--input", manifest, "--output_dir", str(out)]) == 0
    assert "taking over the lock" in caplog.text and "deadrun" in caplog.text and "is gone" in caplog.text
    assert not (out / LOCK).exists() and (out / "summary.json").exists()


def test_a_stale_lock_of_another_host_is_broken_only_when_asked(tmp_path, manifest, capsys, caplog):
    out = tmp_path / "out"
    out.mkdir()
    old = time.time() - 3600
    (out / LOCK).write_bytes(output_lock.Holder("gone", "another-host", 4242, "images", old, old).to_json())
    assert main(["images", "--input", manifest, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "locked by run gone" in err and "looks stale (no heartbeat for" in err and "--break_lock" in err
    assert main(["images", "--input", manifest, "--output_dir", str(out), "--break_lock"]) == 0
    assert "taking over the lock" in caplog.text
    assert not (out / LOCK).exists() and (out / "summary.json").exists()


def test_a_lock_without_heartbeat_for_five_minutes_is_stale(monkeypatch):
    now = 10_000.0
    beat = output_lock.Holder("r", "another-host", 123, "images", now - 900, now - 301)
    assert "no heartbeat for 301 s" in beat.stale_reason(now)
    assert beat.stale_reason(now - 2) == ""  # 299 s: still alive
    job = output_lock.Holder("r", "another-host", 123, "images", now - 9000, now - 9000, mode="job")
    assert job.stale_reason(now) == ""  # a submitted job has no heartbeat; only --break_lock takes it
    launcher_gone = output_lock.Holder("r", socket.gethostname(), _dead_pid(), "images", 1.0, 1.0, mode="job")
    assert launcher_gone.stale_reason(now) == "" and not launcher_gone.dead_here()  # the job runs on


def test_the_heartbeat_renews_the_lock_and_stops_when_it_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(output_lock, "HEARTBEAT_SECONDS", 0.05)
    out = str(tmp_path)
    lock = OutputLock(out, "mine", "images").acquire()
    first = read_holder(out).heartbeat
    time.sleep(0.5)
    assert read_holder(out).heartbeat > first and lock.still_held()
    # someone breaks it and takes it: the heartbeat must not overwrite theirs, the commit check says so
    theirs = output_lock.Holder("theirs", "h", 1, "images", 1.0, 1.0)
    with open(os.path.join(out, LOCK), "wb") as fh:
        fh.write(theirs.to_json())
    time.sleep(0.3)
    assert read_holder(out).run == "theirs"
    assert not lock.still_held() and "taken by run theirs" in lock.lost
    lock.release()
    assert read_holder(out).run == "theirs"  # not ours to remove


def test_a_run_that_lost_its_lock_commits_nothing(tmp_path, manifest, monkeypatch, capsys):
    """Between the run and its commit another run took the folder: exit 3, nothing committed."""
    import medprep.pipelines.cli.runner as runner

    out = tmp_path / "out"
    real_run = runner.run

    def run_then_lose_the_lock(*args, **kwargs):
        result = real_run(*args, **kwargs)
        (out / LOCK).write_bytes(output_lock.Holder("intruder", "h", 1, "images", 1.0, 1.0).to_json())
        return result

    monkeypatch.setattr("medprep.pipelines.cli.main.run", run_then_lose_the_lock)
    assert main(["images", "--input", manifest, "--output_dir", str(out)]) == 3
    assert "taken by run intruder" in capsys.readouterr().err
    assert not (out / "summary.json").exists()


def test_two_real_runs_at_once_one_wins_and_the_other_is_refused(tmp_path, manifest):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "medprep", "images", "--input", manifest, "--output_dir", out]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    loser = next(err for code, err in results if code == 2) if 2 in codes else ""
    # one commits; the other is refused at start-up by the lock or, if it started after the commit,
    # by the outputs now present (no --overwrite): never two commits into one folder
    assert codes == [0, 2], results
    assert "locked by run" in loser or "already holds medprep outputs" in loser
    from medprep.pipelines.tools.verify import verify

    assert verify(out)[0] == []
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_recover_refuses_a_folder_a_live_run_holds(tmp_path, capsys):
    from medprep.pipelines.tools.recover import main as recover_main

    with OutputLock(str(tmp_path), "busy", "images").acquire():
        assert recover_main([str(tmp_path)]) == 2
    assert "locked by run busy" in capsys.readouterr().err
    with pytest.raises(LockHeld):
        with OutputLock(str(tmp_path), "a", "x").acquire():
            OutputLock(str(tmp_path), "b", "x").acquire()
