"""Test helper: a real local GCS emulator (gcp-storage-emulator from PyPI) with one bucket, for gs:// tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def emulator_bucket(name: str) -> Iterator[Any]:
    """Start the emulator on a free loopback port, point STORAGE_EMULATOR_HOST at it (restored after), create
    bucket `name` and yield it (a google.cloud.storage Bucket); the emulator is killed on exit."""
    exe = shutil.which("gcp-storage-emulator") or os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        from google.cloud import storage

        deadline = time.time() + 30
        while True:
            try:
                client = storage.Client.create_anonymous_client()
                client.project = "test"
                bucket = client.create_bucket(name)
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        from medprep.pipelines.io.sources.gcs import use_emulator_if_configured

        assert use_emulator_if_configured()
        yield bucket
    finally:
        proc.kill()
        proc.wait()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


def upload_folder(bucket: Any, folder: str, prefix: str) -> None:
    """Upload every file under a local folder to bucket/prefix/<relative path>."""
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            bucket.blob(f"{prefix}/{os.path.relpath(path, folder)}").upload_from_filename(path)
