"""Decode DICOM pixel data with decoders chosen for safety; one frame at a time.

pydicom tries every installed plugin in turn. On corrupt data the Python-level plugins
(pydicom's own, pylibjpeg/openjpeg, Pillow) raise exceptions, but GDCM can throw an uncaught
C++ exception that aborts the whole process (found by fuzzing: a corrupt JPEG 2000 stream,
rejected by openjpeg, then fed to GDCM). So GDCM never runs in-process here: syntaxes that
only it decodes (JPEG-LS, JPEG lossless, 12-bit JPEG extended) go to a spawned decoder process;
if it dies, the item fails with a clear reason, the process is replaced, and the run goes on.

When no installed decoder handles the data (12-bit lossy JPEG needs the optional GPLv3
pylibjpeg-libjpeg), the error names the transfer syntax, why each installed plugin refused it,
and which packages pydicom would use to decode it.
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
from pydicom.pixels.decoders.base import Decoder, get_decoder

from medprep.transforms.errors import ItemError

IN_PROCESS_PLUGINS = ("pydicom", "pylibjpeg", "pillow")
ISOLATED_PLUGINS = ("gdcm",)
ISOLATED_TIMEOUT_S = 300.0

_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


# Packages that are deliberately not dependencies, and why (README "Pixel decoders").
_LICENCES = {"pylibjpeg-libjpeg": "GPLv3"}


def _transfer_syntax(ds: Dataset) -> str | None:
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _decoder(ds: Dataset) -> Decoder | None:
    uid = _transfer_syntax(ds)
    if uid is None:
        return None
    try:
        return get_decoder(uid)
    except Exception:  # unknown or unsupported syntax: let pydicom's default path report it
        return None


def _plugins(ds: Dataset) -> list[str]:
    decoder = _decoder(ds)
    return list(decoder.available_plugins) if decoder is not None else []


def missing_decoders(ds: Dataset) -> str:
    """Packages pydicom could decode this transfer syntax with, of those not installed ('' when none).

    From pydicom's own list ('pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1'), e.g.
    'pylibjpeg-libjpeg>=2.1 (with pylibjpeg>=2.0), not installed (GPLv3: not a medprep dependency; …)'.
    """
    decoder = _decoder(ds)
    hints = []
    for entry in decoder.missing_dependencies if decoder is not None else []:
        plugin, _, needs = entry.partition(" - requires ")
        packages = [p.strip() for p in needs.split(" and ") if p.strip()] or [plugin.strip()]
        # the package that does the work is the last one pydicom names (pylibjpeg is only its front end)
        main, others = packages[-1], packages[:-1]
        hint = main + (f" (with {', '.join(others)})" if others else "") + ", not installed"
        name = main.split(">")[0].split("=")[0].split("<")[0].strip()
        if name in _LICENCES:
            hint += f" ({_LICENCES[name]}: not a medprep dependency; install it if its licence suits you)"
        hints.append(hint)
    return "; or ".join(hints)


def _reason(exc: BaseException, plugin: str) -> str:
    """One line: pydicom's 'Unable to decode as exceptions were raised by all available plugins:'
    is followed by the plugin's own reason on the next line, which is the part worth keeping."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].startswith("Unable to decode"):
        lines = lines[1:]
    reason = " ".join(lines)
    if reason.startswith(f"{plugin}: "):  # 'gdcm: GDCM does not support …': the caller names the plugin
        reason = reason[len(plugin) + 2 :]
    return reason[:200]


def _no_decoder(ds: Dataset, failures: list[str]) -> ItemError:
    uid = _transfer_syntax(ds)
    name = getattr(uid, "name", str(uid)) if uid is not None else "unknown transfer syntax"
    message = f"cannot decode pixel data ({name}): "
    message += f"no installed decoder could ({'; '.join(failures)})" if failures else "no decoder is installed for it"
    missing = missing_decoders(ds)
    if missing:
        message += f"; pydicom would also try {missing}"
    return ItemError("decode", message)


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
        raise ItemError(
            "decode",
            f"the {plugin} decoder crashed on this pixel data (its isolated process "
            "died); the file is corrupt or unsupported",
        ) from None
    except FutureTimeout:
        _reset_executor(kill=True)
        raise ItemError(
            "timeout", f"the {plugin} decoder took over {ISOLATED_TIMEOUT_S:g} s on this pixel data"
        ) from None


def decode_pixels(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Pixel array of one frame (or all when frame is None): safe plugins in-process, GDCM isolated."""
    plugins = _plugins(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not plugins:
            decoder = _decoder(ds)
            if decoder is not None and decoder.is_encapsulated and decoder.missing_dependencies:
                raise _no_decoder(ds, [])
            return pixel_array(ds, index=frame)
        failures = []
        for plugin in (p for p in plugins if p in IN_PROCESS_PLUGINS):
            try:
                return pixel_array(ds, index=frame, decoding_plugin=plugin)
            except Exception as exc:
                failures.append(f"{plugin}: {_reason(exc, plugin)}")
    for plugin in (p for p in plugins if p in ISOLATED_PLUGINS):
        try:
            return _isolated(ds, frame, plugin)
        except ItemError as exc:
            if failures:
                raise ItemError(exc.stage, f"{exc.message} (before that, {'; '.join(failures)})") from None
            raise
        except Exception as exc:
            failures.append(f"{plugin}: {_reason(exc, plugin)}")
    raise _no_decoder(ds, failures)
