"""The journaled commit: killed at any step (an injected fault, a real SIGKILL), the folder recovers to the old
dataset or the new one, never a mix; `medprep recover` and the next run finish it; dead runs' folders go."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from commit_faults import commit_crashing_at, count_steps  # tests/commit_faults.py
from medprep.pipelines.io import commit
from medprep.pipelines.tools.recover import main as recover_main
from medprep.pipelines.tools.recover import recover

OLD = {
    "arrayrecord/train-00000-of-00002.array_record": b"old0",
    "arrayrecord/train-00001-of-00002.array_record": b"old1",
    "parquet/train-00000-of-00001.parquet": b"oldparquet",
    "errors/errors-00000-of-00001.jsonl": b"olderr",
    "report.html": b"oldreport",
    "preview.png": b"oldpng",
}
NEW = {
    "arrayrecord/train-00000-of-00001.array_record": b"new0",
    "parquet/train-00000-of-00001.parquet": b"newparquet",
    "errors/errors-00000-of-00001.jsonl": b"newerr",
    "preview.png": b"newpng",
}


def _summary(files: dict, tag: str) -> bytes:
    return json.dumps({"tag": tag, "files": [{"path": p} for p in files if p != "preview.png"]}).encode()


def _write(base, files):
    for rel, data in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def _visible(out) -> dict:
    """The dataset a reader sees: every file in OUT outside hidden (staging, backup, journal, lock) names."""
    got = {}
    for d, dirs, files in os.walk(out):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in files:
            if not f.startswith("."):
                rel = os.path.relpath(os.path.join(d, f), out)
                got[rel] = open(os.path.join(d, f), "rb").read()
    return got


def _setup(tmp_path):
    out = tmp_path / "out"
    staging = out / ".staging-abc"
    old = {**OLD, "summary.json": _summary(OLD, "old")}
    new = {**NEW, "summary.json": _summary(NEW, "new")}
    _write(out, old)
    _write(staging, new)
    return str(out), str(staging), old, new


def _never_a_mix(seen: dict, old: dict, new: dict) -> None:
    """What OUT shows mid-commit: a part of the old dataset or a part of the new, complete only when whole."""
    from_old = all(old.get(k) == v for k, v in seen.items())
    from_new = all(new.get(k) == v for k, v in seen.items())
    assert from_old or from_new, sorted(seen)
    if "summary.json" in seen:  # looks complete: must be complete
        assert seen == old or seen == new


def _count_steps(tmp_path) -> int:
    out, staging, _, new = _setup(tmp_path / "count")
    total = count_steps(staging, out)
    assert _visible(out) == new and not os.path.exists(staging)
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # journal, backup, staging: all gone
    return total


@pytest.mark.parametrize("rollback", [False, True])
def test_a_fault_after_every_step_recovers_to_old_or_new(tmp_path, rollback):
    total = _count_steps(tmp_path)
    assert total >= len(OLD) + len(NEW) + 5  # every move, three journal writes, cleanup
    for k in range(1, total + 1):
        out, staging, old, new = _setup(tmp_path / f"k{k}")
        seen_mid: list[dict] = []
        commit_crashing_at(k, staging, out, lambda out=out, seen_mid=seen_mid: seen_mid.append(_visible(out)))
        for seen in seen_mid:
            _never_a_mix(seen, old, new)
        journal = commit.read_journal(out)
        done = recover(out, rollback=rollback)
        got = _visible(out)
        if journal is None:  # the crash came after the journal was removed: committed
            assert got == new and done == []
        elif rollback and journal.phase in ("backup", "install", "unstage", "restore"):
            assert got == old, (k, journal.phase)
            # the new run's files are back in its staging folder, then removed as a dead run's leftover
            assert any("rolled back" in line for line in done) and any(".staging-abc" in line for line in done)
        else:
            assert got == new, (k, journal.phase)
        assert not [n for n in os.listdir(out) if n.startswith(".")], (k, os.listdir(out))
        # recovering twice changes nothing
        assert recover(out, rollback=rollback) == [] and _visible(out) == got


def test_a_repeated_commit_of_the_same_staging_finishes_it(tmp_path):
    """A retried Commit step (Beam retries a failed bundle) finishes the journal it finds, then does nothing."""
    out, staging, _, new = _setup(tmp_path)
    commit_crashing_at(6, staging, out)
    commit.commit_outputs(staging, out)
    commit.commit_outputs(staging, out)
    assert _visible(out) == new


def test_an_interrupted_commit_of_another_run_is_finished_before_a_new_one(tmp_path):
    out, staging, _, new = _setup(tmp_path)
    commit_crashing_at(4, staging, out)
    newer = {"parquet/train-00000-of-00001.parquet": b"newer"}
    newer = {**newer, "summary.json": _summary(newer, "newer")}
    _write(os.path.join(out, ".staging-def"), newer)
    commit.commit_outputs(os.path.join(out, ".staging-def"), out)
    assert _visible(out) == newer


def test_an_incomplete_staging_folder_is_never_committed(tmp_path):
    out, staging, old, _ = _setup(tmp_path)
    os.remove(os.path.join(staging, "parquet", "train-00000-of-00001.parquet"))
    with pytest.raises(FileNotFoundError, match="lacks 1 listed file"):
        commit.commit_outputs(staging, out)
    assert _visible(out) == old and commit.read_journal(out) is None


def test_a_jobs_commit_step_retried_after_a_fault_keeps_its_lock_and_finishes(tmp_path):
    """Flex templates: the job's own commit step fails part-way; the runner's retry must be able to finish."""
    from medprep.pipelines.io.output_lock import OutputLock, read_holder
    from medprep.pipelines.io.run_output import commit_run

    out, staging, _, new = _setup(tmp_path)
    OutputLock(out, "abc", "images", mode="job").acquire()  # the launcher's lock, named after .staging-abc
    commit.STEPS.hook = lambda n, what: (_ for _ in ()).throw(OSError("worker lost")) if n == 3 else None
    try:
        with pytest.raises(OSError):
            commit_run(staging, out, 0.1)
    finally:
        commit.STEPS.hook = None
    assert read_holder(out).run == "abc"  # kept for the retry
    commit_run(staging, out, 0.1)  # the retry
    assert _visible(out) == new and read_holder(out) is None


def _dataset(tmp_path, name: str, n: int, seed: int) -> str:
    """A real `medprep images` output of n generated PNGs."""
    import io

    import numpy as np
    from PIL import Image

    from medprep.pipelines.cli.main import run_pipeline

    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed * 100 + i).integers(0, 255, (24, 32, 3), np.uint8)).save(buf, "PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue())
        rows.append({"image": f"{i}.png", "text": f"{name} {i}", "patient_id": f"{name}{i}"})
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / name)
    run_pipeline("images", ["--input", str(folder / "m.jsonl"), "--output_dir", out, "--num_shards", "2"])
    return out


@pytest.fixture(scope="module")
def real_datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    return _dataset(base, "old", 6, 1), _dataset(base, "new", 5, 2)


def _snapshot(out) -> dict:
    return _visible(out)


def _kill_commit_at(step: int, out: str, staging: str) -> int:
    code = "import sys; from medprep.pipelines.io.commit import commit_outputs as c; c(sys.argv[1], sys.argv[2])"
    env = {**os.environ, commit.KILL_AT_ENV: str(step)}
    return subprocess.run([sys.executable, "-c", code, staging, out], env=env, timeout=120).returncode


def test_real_sigkills_during_the_commit_leave_old_or_new_and_verify_passes(tmp_path, real_datasets):
    from medprep.pipelines.tools.verify import verify

    old_out, new_out = real_datasets
    old, new = _snapshot(old_out), _snapshot(new_out)
    n_old, n_new = len(old), len(new)
    # a kill in the backup phase, at its journal write, in the install phase, at the commit point, in cleanup
    steps = [1, 2, n_old, n_old + 2, n_old + 3, n_old + 1 + n_new, n_old + n_new + 2, n_old + n_new + 3]
    for i, step in enumerate(steps):
        out = str(tmp_path / f"out{i}")
        shutil.copytree(old_out, out)
        shutil.copytree(new_out, os.path.join(out, ".staging-run"))
        assert _kill_commit_at(step, out, os.path.join(out, ".staging-run")) == -9  # a real SIGKILL
        rollback = i % 2 == 1
        assert recover_main([out] + (["--rollback"] if rollback else [])) == 0
        got = _snapshot(out)
        assert got in (old, new), step
        if not rollback:
            assert got == new, step
        problems, _ = verify(out)
        assert problems == [], (step, problems)


def test_the_next_run_finishes_an_interrupted_commit_and_says_so(tmp_path, real_datasets, caplog):
    from medprep.pipelines.cli.main import main

    old_out, new_out = real_datasets
    out = str(tmp_path / "out")
    shutil.copytree(old_out, out)
    shutil.copytree(new_out, os.path.join(out, ".staging-run"))
    assert _kill_commit_at(5, out, os.path.join(out, ".staging-run")) == -9
    manifest = os.path.join(os.path.dirname(new_out), "src-new", "m.jsonl")
    # without --overwrite the folder is refused, and the message says how to finish the commit
    assert main(["images", "--input", manifest, "--output_dir", out]) == 2
    assert main(["images", "--input", manifest, "--output_dir", out, "--overwrite"]) == 0
    assert "a commit was interrupted; finished" in caplog.text
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_dead_runs_staging_is_removed_by_the_next_run_and_by_recover(tmp_path, real_datasets, caplog):
    from medprep.pipelines.cli.main import main

    old_out, new_out = real_datasets
    out = str(tmp_path / "out")
    shutil.copytree(old_out, out)
    shutil.copytree(new_out, os.path.join(out, ".staging-dead1"))  # a run killed before its commit
    shutil.copytree(new_out, os.path.join(out, ".replaced-dead2"))
    done = recover(out)
    assert sorted(line.split()[1] for line in done) == [".replaced-dead2", ".staging-dead1"]
    assert all("left by a run that did not finish" in line for line in done)
    assert _snapshot(out) == _snapshot(old_out)
    shutil.copytree(new_out, os.path.join(out, ".staging-dead3"))
    manifest = os.path.join(os.path.dirname(new_out), "src-new", "m.jsonl")
    assert main(["images", "--input", manifest, "--output_dir", out, "--overwrite"]) == 0
    assert "removed .staging-dead3" in caplog.text
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_recover_on_a_whole_folder_says_there_is_nothing_to_do(tmp_path, real_datasets, capsys):
    out = str(tmp_path / "out")
    shutil.copytree(real_datasets[0], out)
    assert recover_main([out]) == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert _snapshot(out) == _snapshot(real_datasets[0])


def test_verify_reports_leftover_staging_and_an_interrupted_commit(tmp_path, real_datasets, capsys):
    from medprep.pipelines.tools.verify import main as verify_main

    old_out, new_out = real_datasets
    out = str(tmp_path / "out")
    shutil.copytree(old_out, out)
    shutil.copytree(new_out, os.path.join(out, ".staging-dead"))
    assert verify_main([out]) == 0  # the dataset is whole: a warning, not a failure
    printed = capsys.readouterr().out
    assert "WARN .staging-dead: left by a run that did not finish" in printed and f"medprep recover {out}" in printed
    assert _kill_commit_at(4, out, os.path.join(out, ".staging-dead")) == -9
    assert verify_main([out]) == 1
    printed = capsys.readouterr().out
    assert "a commit into" in printed and "was interrupted (backup phase)" in printed
    assert recover_main([out]) == 0 and verify_main([out]) == 0


def test_recover_refuses_a_folder_that_does_not_exist(tmp_path, capsys):
    assert recover_main([str(tmp_path / "typo")]) == 2
    assert capsys.readouterr().err.strip() == f"medprep: error: output_dir: {tmp_path / 'typo'} not found"
    assert not (tmp_path / "typo").exists()
