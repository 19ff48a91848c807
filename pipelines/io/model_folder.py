"""A model folder as a local path: local folders as they are, gs:// prefixes copied once per process."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading

from apache_beam.io.filesystems import FileSystems

import medprep.pipelines.io.sources.files  # noqa: F401  (GCS emulator hook in every process)

# Files an encoder folder needs; anything else under the prefix (tokenizers, READMEs…) is not copied.
MODEL_FILES = ("config.json", "preprocessor_config.json", "model.safetensors.index.json")
_COPIES: dict[str, str] = {}
_LOCK = threading.Lock()


def _wanted(name: str) -> bool:
    return name in MODEL_FILES or name.endswith(".safetensors")


def local_model_folder(path: str) -> str:
    """`path` itself when local; for gs:// a local copy of its config, processor config and safetensors
    (made once per process and reused). FileNotFoundError when nothing is there."""
    if "://" not in path:
        return path
    with _LOCK:
        if path in _COPIES and os.path.isdir(_COPIES[path]):
            return _COPIES[path]
        prefix = path.rstrip("/") + "/"
        matched = FileSystems.match([prefix + "*"])[0].metadata_list
        files = sorted(m.path for m in matched if _wanted(m.path[len(prefix) :]) and "/" not in m.path[len(prefix) :])
        if not files:
            raise FileNotFoundError(f"{path}: no config.json, preprocessor_config.json or *.safetensors under it")
        tag = hashlib.sha256(path.encode("utf-8")).hexdigest()[:12]
        local = tempfile.mkdtemp(prefix=f"medprep-model-{tag}-")
        for src in files:
            with (
                FileSystems.open(src, compression_type="uncompressed") as fh,
                open(os.path.join(local, src[len(prefix) :]), "wb") as out,
            ):
                shutil.copyfileobj(fh, out, 8 << 20)
        _COPIES[path] = local
        return local
