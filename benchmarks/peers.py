"""medprep against what people use instead, on the same inputs, in fresh processes, in one run.

    python -m benchmarks.peers [--n 200] [--small 10] [--series 4] [--slices 300] [--only images|volumes]

Images (16-bit CXR DICOM 2048×2500 with a VOI window, 896² PNG out, one Parquet file of image bytes +
text), each peer a whole run from process start to its output file:

- **Pool script**: what a straightforward script does — `multiprocessing.Pool(2)` over the rows, per
  row pydicom + `apply_modality_lut` + `apply_voi_lut`, scaled to 8 bits, `np.pad` to a square, Pillow
  BILINEAR to 896, PNG at Pillow's default level; the parent writes the Parquet file with pyarrow;
- **HF datasets**: the same per-row function through `datasets.Dataset.map(num_proc=2)`, then
  `to_parquet`;
- **MONAI**: `LoadImage` (PydicomReader) → `EnsureChannelFirst` → `ScaleIntensityRange` over the
  header's window → `SpatialPad` to a square → `Resize` 896 bilinear, in a `DataLoader` with 2 workers,
  PNG with Pillow, Parquet with pyarrow;
- **medprep images**: in-process (items in threads by default; `--item_threads 1` for one at a time) and
  `--direct_running_mode=multi_processing --direct_num_workers=2` (records, tokenization off, both formats,
  summary, preview).

Sources are compiled first (`compile_sources`), as an installed package is.

CT (a 512² int16 series, 85 slices selected): **the MedGemma notebook approach** (pydicom reads
every instance with its pixels, sorts by position, HU from RescaleSlope/Intercept, the reference's
85 indices, the notebook's float32 clip/normalize per window (-1024..1024, -135..215, 0..80) stacked
as RGB, rounded to 8 bits; then, for the same output as medprep, Pillow BILINEAR to 896 and PNG
at Pillow's default level) in one process; **prepare_series** (medprep's library path) in one
process; **medprep volumes** in-process and with 2 workers.

Prints Markdown tables; `--json OUT` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

PEERS = {
    "pool": "Pool script (2 processes)",
    "hf": "HF datasets.map(num_proc=2)",
    "monai": "MONAI (DataLoader, 2 workers)",
}


# ---- the per-row work of the peers (written as their users would) ---------------------------------


def plain_cxr(row: dict) -> dict:
    """One CXR row the straightforward way: pydicom's own LUT functions, float, np.pad, Pillow."""
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(row["image"])
    pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    low, high = pixels.min(), pixels.max()
    grey = ((pixels - low) / max(high - low, 1e-9) * 255).round().astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        grey = 255 - grey
    return {"image": _square_png(grey), "text": row["text"]}


def _square_png(grey) -> bytes:
    """Centred zero padding to a square, Pillow BILINEAR to 896, RGB PNG at Pillow's default level."""
    import numpy as np
    from PIL import Image

    h, w = grey.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.pad(grey, ((top, side - h - top), (left, side - w - left)))
    image = Image.fromarray(square).resize((896, 896), Image.Resampling.BILINEAR).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_parquet(rows: list[dict], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [r["image"] for r in rows], "text": [r["text"] for r in rows]}), path)


def run_pool(rows: list[dict], out: str) -> None:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        done = pool.map(plain_cxr, rows, chunksize=4)
    _write_parquet(done, out)


def run_hf(rows: list[dict], out: str) -> None:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows).map(plain_cxr, num_proc=2, remove_columns=["image"])
    ds.to_parquet(out)


class _MonaiWindow:
    """MONAI's ScaleIntensityRange over the file's own VOI window (read from its header)."""

    def __call__(self, item: dict) -> dict:
        import pydicom
        from monai.transforms import ScaleIntensityRange

        ds = pydicom.dcmread(item["path"], stop_before_pixels=True)
        centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
        scale = ScaleIntensityRange(centre - width / 2, centre + width / 2, 0.0, 255.0, clip=True)
        return {**item, "image": scale(item["image"])}


class _MonaiSquare:
    """SpatialPad to the image's longer side (MONAI pads symmetrically, as medprep does)."""

    def __call__(self, item: dict) -> dict:
        from monai.transforms import SpatialPad

        side = max(item["image"].shape[1:])
        return {**item, "image": SpatialPad((side, side))(item["image"])}


def run_monai(rows: list[dict], out: str) -> None:
    import numpy as np
    from monai.data import Dataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized
    from PIL import Image
    from torch.utils.data import DataLoader  # one item at a time (MONAI's DataLoader collates into batches)

    chain = Compose(
        [
            LoadImaged("image", reader="PydicomReader", image_only=True),
            EnsureChannelFirstd("image"),
            _MonaiWindow(),
            _MonaiSquare(),
            Resized("image", (896, 896), mode="bilinear"),
        ]
    )
    items = [{"image": r["image"], "path": r["image"], "text": r["text"]} for r in rows]
    done = []
    for item in DataLoader(Dataset(items, chain), batch_size=None, num_workers=2):
        grey = np.asarray(item["image"][0]).round().clip(0, 255).astype(np.uint8).T  # MONAI is (x, y)
        buf = io.BytesIO()
        Image.fromarray(grey).convert("RGB").save(buf, format="PNG")
        done.append({"image": buf.getvalue(), "text": item["text"]})
    _write_parquet(done, out)


def run_peer(name: str, manifest: str, out: str) -> None:
    rows = [json.loads(line) for line in open(manifest)]
    rows = [{"image": r["image"], "text": r["text"]} for r in rows]
    {"pool": run_pool, "hf": run_hf, "monai": run_monai}[name](rows, out)


# ---- CT: the MedGemma notebook approach -------------------------------------------------------------


def notebook_series(folder: str, n_select: int = 85) -> list[bytes]:
    """One CT series as the notebook prepares it (see the module docstring), 896² PNG per selected slice."""
    import numpy as np
    import pydicom
    from PIL import Image

    slices = [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    n = len(slices)
    picks = [round(i / n_select * (n - 1)) for i in range(1, n_select + 1)] if n > n_select else range(n)
    out = []
    for k in picks:
        ds = slices[k]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        channels = []
        for low, high in ((-1024, 1024), (-135, 215), (0, 80)):  # the notebook's window_clips
            c = np.clip(hu, low, high).astype(np.float32)
            c -= low
            c /= high - low
            c *= 255.0
            channels.append(c)
        rgb = np.round(np.stack(channels, axis=-1)).astype(np.uint8)
        image = Image.fromarray(rgb).resize((896, 896), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def run_series_peer(name: str, manifest: str) -> None:
    """'notebook' or 'prepare_series' over every row's series folder, one process."""
    folders = [json.loads(line)["image"] for line in open(manifest)]
    if name == "notebook":
        for folder in folders:
            notebook_series(folder)
        return
    from medprep import VolumeOptions, prepare_series

    for folder in folders:
        prepare_series(folder, options=VolumeOptions(max_slices=85))


# ---- measuring -----------------------------------------------------------------------------------


def timed_process(module: str, args: list[str]) -> dict:
    """Run `python -m MODULE ARGS` in a fresh process: seconds from the wrapper's start and peak memory
    (VmHWM of the process and of its largest descendant, polled as benchmarks.measure does)."""
    from benchmarks.measure import _WRAPPER

    head = _WRAPPER.split("start = time.perf_counter()")[0]  # the memory poll, without the CLI run
    wrapper = head + (
        "import runpy\nstart = time.perf_counter()\nsys.argv = sys.argv[1:]\n"
        "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "seconds = time.perf_counter() - start\ndone.set()\n"
        "print(json.dumps({'seconds': seconds, 'self_kb': hwm_kb(os.getpid()), 'children_kb': peak['workers_kb']}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, module, *args], capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def medprep_run(pipeline: str, manifest: str, out: str, extra: list[str]) -> dict:
    """A whole `medprep` run in a fresh process, timed from process start (benchmarks.timeline)."""
    start = time.perf_counter()
    args = [pipeline, "--input", manifest, "--output_dir", out, "--overwrite", "--split_salt", "bench", *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.timeline", *args], capture_output=True, text=True, timeout=7200
    )
    if proc.returncode != 0:
        raise RuntimeError(f"medprep {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - start
    return figures


def compile_sources() -> None:
    """Write the .pyc files an installed package has (pip compiles them at install; an editable checkout
    under PYTHONDONTWRITEBYTECODE=1 would otherwise compile medprep's modules in every timed process)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folders = [os.path.join(root, f) for f in ("medprep", "pipelines", "transforms", "schemas", "benchmarks")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], env=env, check=True, capture_output=True)


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def image_inputs(folder: str, n: int, distinct: int = 20) -> str:
    """A manifest of n rows over `distinct` generated CXR DICOMs (cycled; the page cache holds them)."""
    from benchmarks.run import make_inputs

    _, _, paths = make_inputs(folder, distinct)
    dicoms = [p for p in paths if p.endswith(".dcm")]
    manifest = os.path.join(folder, f"cxr{n}.jsonl")
    with open(manifest, "w") as fh:
        for i in range(n):
            row = {"id": f"r{i}", "image": dicoms[i % len(dicoms)], "text": f"report {i}", "patient_id": f"p{i}"}
            fh.write(json.dumps(row) + "\n")
    return manifest


# The workers are measured, whatever the run's size (medprep would otherwise run small runs in-process).
MP2 = ["--direct_running_mode=multi_processing", "--direct_num_workers=2", "--min_inputs_per_worker", "0"]


def images_figures(folder: str, n: int, small: int) -> list[dict]:
    """Every image peer and medprep on n rows, and the Pool script and medprep on `small` rows."""
    rows = []
    for count in (small, n):
        manifest = image_inputs(folder, count)
        runs: list[tuple[str, str, list[str] | None]] = [
            (label, peer, None) for peer, label in PEERS.items() if count == n or peer == "pool"
        ]
        runs += [
            ("medprep images, in-process", "", []),
            ("medprep images, in-process, 1 thread", "", ["--item_threads", "1"]),
            ("medprep images, 2 workers", "", MP2),
        ]
        for label, peer, extra in runs:
            before = load()
            out = os.path.join(folder, f"out-{len(rows)}")
            if extra is None:
                m = timed_process("benchmarks.peers", ["--run", peer, manifest, out + ".parquet"])
                figures = {"seconds": m["seconds"], "runner_mib": m["self_kb"] / 1024}
                figures["worker_mib"] = m["children_kb"] / 1024
            else:
                t = medprep_run("images", manifest, out, ["--image_size", "896", *extra])
                figures = {"seconds": t["seconds"], "phases": t["phases"], "item_ms": t["item_ms"]}
            rows.append({"label": label, "items": count, "load": before, **figures})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def series_inputs(folder: str, series: int, slices: int) -> str:
    """A manifest of `series` rows over one generated 512² CT series of `slices` slices (with noise)."""
    import numpy as np

    from medprep.samples import ct_body_slice, write_series

    path = os.path.join(folder, "ct")
    rng = np.random.default_rng(0)

    def noisy(k: int):
        return (ct_body_slice(k, slices, 512) + rng.normal(0, 10, (512, 512))).astype(np.int16)

    write_series(path, slices, values=noisy, shuffle_seed=None)
    manifest = os.path.join(folder, f"ct{series}.jsonl")
    with open(manifest, "w") as fh:
        for i in range(series):
            fh.write(json.dumps({"id": f"s{i}", "image": path, "text": f"r{i}", "patient_id": f"p{i}"}) + "\n")
    return manifest


def volumes_figures(folder: str, series: int, slices: int) -> list[dict]:
    """The notebook approach, prepare_series and medprep volumes on `series` rows of one series."""
    rows = []
    for count in (1, series):
        manifest = series_inputs(folder, count, slices)
        for label, extra in (
            ("MedGemma notebook approach, one process", "notebook"),
            ("prepare_series, one process", "prepare_series"),
            ("medprep volumes, in-process", []),
            ("medprep volumes, 2 workers", MP2),
        ):
            before = load()
            if isinstance(extra, str):
                m = timed_process("benchmarks.peers", ["--series-run", extra, manifest])
                figures = {"seconds": m["seconds"], "runner_mib": m["self_kb"] / 1024}
            else:
                out = os.path.join(folder, f"vout-{len(rows)}")
                t = medprep_run("volumes", manifest, out, ["--max_slices", "85", *extra])
                figures = {"seconds": t["seconds"], "phases": t["phases"], "item_ms": t["item_ms"]}
            rows.append({"label": label, "items": count, "load": before, **figures})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


STAGE_KINDS = (  # a fused stage's share of a run, by the steps it holds (first match)
    ("Prepare", "items: read, decode, transform, encode, text, staged records"),
    ("RenderSlices", "items: slices rendered (fan-out)"),
    ("_Plan-", "items: planning (fan-out)"),
    ("Assemble", "items: assembly (fan-out)"),
    ("WriteShard", "write shards"),
    ("Preview", "preview"),
    ("Summary", "summary.json"),
    ("ReadRows", "manifest read (+ worker start-up with multi_processing)"),
)


def stage_kind(name: str) -> str:
    for step, kind in STAGE_KINDS:
        if step in name:
            return kind
    return "other stages (counts, error lines, combiners)"


def whole_runs(folder: str, n: int) -> list[dict]:
    """medprep images on n CXR, in-process (items in threads, and one at a time) and with 2 workers: seconds,
    peak memory, and where the time went."""
    from benchmarks.measure import run_measured

    manifest = image_inputs(folder, n)
    rows = []
    for label, extra in (("in-process", []), ("in-process, 1 thread", ["--item_threads", "1"]), ("2 workers", MP2)):
        before = load()
        out = os.path.join(folder, f"whole-{len(rows)}")
        args = ["images", "--input", manifest, "--output_dir", out, "--overwrite", "--split_salt", "bench", *extra]
        counts, m = run_measured(*args, timeline=True)
        t = m["timeline"]
        parts: dict[str, float] = {}
        for phase, sec in t["phases"]:
            if phase != "stages":
                parts[f"fixed: {phase}"] = sec
        for name, sec, _ in t["stages"]:
            kind = stage_kind(name)
            parts[kind] = parts.get(kind, 0.0) + sec
        rows.append(
            {
                "label": f"images: {counts['images']} CXR, {label}",
                "items": counts["images"],
                "seconds": m["seconds"],
                "runner_mib": m["self_kb"] / 1024,
                "worker_mib": m["children_kb"] / 1024,
                "load": before,
                "parts": parts,
                "item_ms": t["item_ms"],
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def print_whole(rows: list[dict]) -> None:
    print("| whole run | seconds | items/s | peak RSS runner (MiB) | peak RSS largest worker (MiB) | load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        worker = f"{r['worker_mib']:.0f}" if r["worker_mib"] else "(in the runner)"
        rate = r["items"] / r["seconds"]
        print(f"| {r['label']} | {r['seconds']:.1f} | {rate:.1f} | {r['runner_mib']:.0f} | {worker} | {r['load']} |")
    print("\n| where the time went (s) | " + " | ".join(r["label"] for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for key in sorted({k for r in rows for k in r["parts"]}, key=lambda k: -max(r["parts"].get(k, 0) for r in rows)):
        print(f"| {key} | " + " | ".join(f"{r['parts'].get(key, 0):.2f}" for r in rows) + " |")
    print("\n| per-item CPU, summed over the run (s) | " + " | ".join(r["label"] for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for key in ("read", "decode", "transform", "encode", "text", "item"):
        print(f"| {key} | " + " | ".join(f"{r['item_ms'].get(key, 0) / 1000:.2f}" for r in rows) + " |")
    print()


def print_table(title: str, unit: str, rows: list[dict]) -> None:
    print(f"{title}\n\n| run | {unit} | seconds | {unit}/s | load before |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['items']} | {r['seconds']:.2f} | {r['items'] / r['seconds']:.1f} | {r['load']} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="CXR rows for the throughput comparison")
    ap.add_argument("--small", type=int, default=10, help="CXR rows for the fixed-cost comparison")
    ap.add_argument("--series", type=int, default=4, help="CT rows (one series each) for the volumes comparison")
    ap.add_argument("--slices", type=int, default=300, help="slices in the generated CT series")
    ap.add_argument("--only", choices=("images", "volumes", "whole"), default=None)
    ap.add_argument("--whole-n", type=int, default=1000, help="CXR rows for the whole-run table")
    ap.add_argument("--json", default="", help="also write the raw figures here")
    ap.add_argument("--run", nargs=3, metavar=("PEER", "MANIFEST", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--series-run", nargs=2, metavar=("PEER", "MANIFEST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        return run_peer(*args.run)
    if args.series_run:
        return run_series_peer(*args.series_run)
    compile_sources()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "images"):
            figures["images"] = images_figures(d, args.n, args.small)
            print_table("CXR", "images", figures["images"])
        if args.only in (None, "volumes"):
            figures["volumes"] = volumes_figures(d, args.series, args.slices)
            print_table("CT series", "series", figures["volumes"])
        if args.only in (None, "whole"):
            figures["whole"] = whole_runs(d, args.whole_n)
            print_whole(figures["whole"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
