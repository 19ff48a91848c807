"""The journaled commit and the output lock on gs://, against a local GCS emulator (gcp-storage-emulator).

The emulator ignores ifGenerationMatch preconditions, so two lock creations racing within one request's
time cannot be told apart here; the lock's check-then-create-if-absent is tested sequentially, and real GCS
enforces the precondition that closes the race."""

import json
import os
import subprocess
import sys

import pytest

from commit_faults import commit_crashing_at, count_steps  # tests/commit_faults.py
from medprep.pipelines.io import commit
from medprep.pipelines.io.output_lock import LockHeld, OutputLock, read_holder
from medprep.pipelines.tools.recover import recover

BUCKET = "medprep-commit"
OLD = {
    "arrayrecord/train-00000-of-00002.array_record": b"old0",
    "arrayrecord/train-00001-of-00002.array_record": b"old1",
    "errors/errors-00000-of-00001.jsonl": b"olderr",
    "preview.png": b"oldpng",
}
NEW = {
    "arrayrecord/train-00000-of-00001.array_record": b"new0",
    "errors/errors-00000-of-00001.jsonl": b"newerr",
}


@pytest.fixture(scope="module")
def gcs():
    from gcs_emulator import emulator_bucket

    with emulator_bucket(BUCKET) as bucket:
        yield bucket


def _summary(files, tag):
    return json.dumps({"tag": tag, "files": [{"path": p} for p in files if p != "preview.png"]}).encode()


def _setup(bucket, prefix):
    old = {**OLD, "summary.json": _summary(OLD, "old")}
    new = {**NEW, "summary.json": _summary(NEW, "new")}
    for rel, data in old.items():
        bucket.blob(f"{prefix}/{rel}").upload_from_string(data)
    for rel, data in new.items():
        bucket.blob(f"{prefix}/.staging-run/{rel}").upload_from_string(data)
    return f"gs://{BUCKET}/{prefix}", f"gs://{BUCKET}/{prefix}/.staging-run", old, new


def _visible(bucket, prefix) -> dict:
    got = {}
    for blob in bucket.list_blobs(prefix=prefix + "/"):
        rel = blob.name[len(prefix) + 1 :]
        if not rel.startswith("."):
            got[rel] = blob.download_as_bytes()
    return got


def _hidden(bucket, prefix) -> list:
    return [b.name for b in bucket.list_blobs(prefix=prefix + "/") if b.name[len(prefix) + 1 :].startswith(".")]


def test_a_fault_after_every_step_on_gcs_recovers_to_old_or_new(gcs):
    out, staging, _, new = _setup(gcs, "count")
    total = count_steps(staging, out)
    assert _visible(gcs, "count") == new and _hidden(gcs, "count") == []
    for k in range(1, total + 1):
        for rollback in (False, True):
            prefix = f"k{k}-{int(rollback)}"
            out, staging, old, new = _setup(gcs, prefix)
            commit_crashing_at(k, staging, out)
            journal = commit.read_journal(out)
            recover(out, rollback=rollback)
            got = _visible(gcs, prefix)
            expect_old = rollback and journal is not None and journal.phase in ("backup", "install")
            assert got == (old if expect_old else new), (k, rollback, journal and journal.phase)
            assert _hidden(gcs, prefix) == [], (k, rollback)


def test_a_real_sigkill_mid_commit_on_gcs_then_recover(gcs):
    out, staging, _, new = _setup(gcs, "killed")
    code = "import sys; from medprep.pipelines.io.commit import commit_outputs as c; c(sys.argv[1], sys.argv[2])"
    env = {**os.environ, commit.KILL_AT_ENV: "7"}  # in the install phase
    assert subprocess.run([sys.executable, "-c", code, staging, out], env=env, timeout=180).returncode == -9
    assert commit.read_journal(out).phase == "install"
    assert "summary.json" not in _visible(gcs, "killed")  # a half-committed folder never looks complete
    recover(out)
    assert _visible(gcs, "killed") == new and _hidden(gcs, "killed") == []


def test_the_lock_on_gcs(gcs):
    out = f"gs://{BUCKET}/locked"
    first = OutputLock(out, "first", "images").acquire()
    try:
        assert read_holder(out).run == "first"
        with pytest.raises(LockHeld, match="locked by run first"):
            OutputLock(out, "second", "images").acquire()
        assert first.still_held()
    finally:
        first.release()
    assert read_holder(out) is None
    with OutputLock(out, "second", "images").acquire():
        assert read_holder(out).run == "second"
    assert read_holder(out) is None


def test_a_gs_object_with_glob_characters_in_its_name_is_read_with_its_own_size(gcs):
    from medprep.pipelines.io.sources.files import read_bytes
    from medprep.transforms.errors import ItemError

    gcs.blob("names/scan[1].dcm").upload_from_string(b"x" * 100)
    gcs.blob("names/b1.dcm").upload_from_string(b"y" * 10)  # what the pattern b[12].dcm would match
    gcs.blob("names/b[12].dcm").upload_from_string(b"z" * 50)
    assert read_bytes(f"gs://{BUCKET}/names/scan[1].dcm") == b"x" * 100
    assert read_bytes(f"gs://{BUCKET}/names/b[12].dcm", limit=50) == b"z" * 50  # its own size, not b1.dcm's
    with pytest.raises(ItemError, match=r"above --max_input_bytes \(40\)"):
        read_bytes(f"gs://{BUCKET}/names/b[12].dcm", limit=40)
    with pytest.raises(ItemError, match="file not found"):
        read_bytes(f"gs://{BUCKET}/names/missing[2].dcm")
