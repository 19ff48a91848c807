"""Decode DICOM pixel data with decoders chosen for safety; one frame at a time.

pydicom tries every installed plugin in turn. On corrupt data the Python-level plugins
(pydicom's own, pylibjpeg/openjpeg, Pillow) raise exceptions, but GDCM can throw an uncaught
C++ exception that aborts the whole process (found by fuzzing: a corrupt JPEG 2000 stream,
rejected by openjpeg, then fed to GDCM). So GDCM never runs in-process here: syntaxes that
only it decodes (JPEG-LS, JPEG lossless, 12-bit JPEG extended) go to a spawned decoder process;
if it dies, the item fails with a clear reason, the process is replaced, and the run goes on.
"""
from __future__ import annotations

import multiprocessing
import pickle
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder

from transforms.errors import ItemError

IN_PROCESS_PLUGINS = ("pydicom", "pylibjpeg", "pillow")
ISOLATED_PLUGINS = ("gdcm",)
ISOLATED_TIMEOUT_S = 300.0

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


def _plugins(ds: Dataset) -> list[str]:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return []
    try:
        return list(get_decoder(uid).available_plugins)
    except Exception:  # unknown or unsupported syntax: let pydicom's default path report it
        return []


def _decode_in_child(blob: bytes, frame: int | None, plugin: str) -> np.ndarray:
    """Runs in the isolated process."""
    ds = pickle.loads(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pixel_array(ds, index=frame, decoding_plugin=plugin)


def _reset_executor(kill: bool) -> None:
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        if kill:
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)


def _isolated(ds: Dataset, frame: int | None, plugin: str) -> np.ndarray:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        executor = _executor
    future = executor.submit(_decode_in_child, pickle.dumps(ds), frame, plugin)
    try:
        return future.result(timeout=ISOLATED_TIMEOUT_S)
    except BrokenProcessPool:
        _reset_executor(kill=False)
        raise ItemError("decode", f"the {plugin} decoder crashed on this pixel data (its isolated process "
                                  "died); the file is corrupt or unsupported") from None
    except FutureTimeout:
        _reset_executor(kill=True)
        raise ItemError("timeout", f"the {plugin} decoder took over {ISOLATED_TIMEOUT_S:g} s on this pixel data") from None


def decode_pixels(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Pixel array of one frame (or all when frame is None): safe plugins in-process, GDCM isolated."""
    plugins = _plugins(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not plugins:
            return pixel_array(ds, index=frame)
        failures = []
        for plugin in (p for p in plugins if p in IN_PROCESS_PLUGINS):
            try:
                return pixel_array(ds, index=frame, decoding_plugin=plugin)
            except Exception as exc:
                failures.append(f"{plugin}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}")
    for plugin in (p for p in plugins if p in ISOLATED_PLUGINS):
        try:
            return _isolated(ds, frame, plugin)
        except ItemError as exc:
            if failures:
                raise ItemError(exc.stage, f"{exc.message} (before that, {'; '.join(failures)})") from None
            raise
        except Exception as exc:
            failures.append(f"{plugin}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}")
    raise ValueError("; ".join(failures) or "no decoder available for this transfer syntax")
