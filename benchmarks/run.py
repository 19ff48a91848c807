"""Throughput of the images pipeline, stage by stage, on one core, against a baseline and the floor.

    python -m benchmarks.run [--n 24] [--pipeline-n 48]

Inputs are generated: 16-bit CXR DICOMs (2048×2500, VOI window) and JPEG photos (1600×1200).
Prints a Markdown table (images/s on one core; ms per image).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import pydicom
from PIL import Image

from medprep.samples import synthetic_cxr, synthetic_fundus, write_dicom
from medprep.transforms.encode import encode_image
from medprep.transforms.geometry import pad_and_resize
from medprep.transforms.image import ImageOptions, decode_any, finish_rgb


def _timeit(fn, items, repeat: int = 2) -> float:
    """Best-of-`repeat` seconds per item."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def plain_loop(data: bytes) -> bytes:
    """What a straightforward script does: pydicom/PIL, float min-max, np.pad, PIL resize, PNG save."""
    if data[128:132] == b"DICM":
        ds = pydicom.dcmread(io.BytesIO(data))
        slope, intercept = float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0))
        a = ds.pixel_array.astype(np.float32) * slope + intercept
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        a = np.clip((a - (c - w / 2)) / w, 0, 1) * 255
        rgb = np.stack([a.astype(np.uint8)] * 3, axis=-1)
    else:
        rgb = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    h, w_ = rgb.shape[:2]
    s = max(h, w_)
    padded = np.pad(rgb, (((s - h) // 2, s - h - (s - h) // 2), ((s - w_) // 2, s - w_ - (s - w_) // 2), (0, 0)))
    img = Image.fromarray(padded).resize((896, 896), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_inputs(folder: str, n: int) -> tuple[list[bytes], list[bytes], list[str]]:
    dicoms, photos, paths = [], [], []
    for i in range(n):
        p = write_dicom(
            os.path.join(folder, f"cxr{i}.dcm"), synthetic_cxr(2048, 2500, seed=i), window=(1800, 3000), patient=i
        )
        dicoms.append(open(p, "rb").read())
        paths.append(p)
        buf = io.BytesIO()
        Image.fromarray(synthetic_fundus(1600, seed=i)[:1200]).save(buf, format="JPEG", quality=95)
        q = os.path.join(folder, f"photo{i}.jpg")
        open(q, "wb").write(buf.getvalue())
        photos.append(buf.getvalue())
        paths.append(q)
    return dicoms, photos, paths


def stage_table(dicoms: list[bytes], photos: list[bytes]) -> list[tuple[str, str, float]]:
    rows = []
    opts = ImageOptions()
    for kind, items in (("CXR DICOM 2048×2500 16-bit", dicoms), ("JPEG photo 1600×1200", photos)):
        rendered = [decode_any(d) for d in items]
        resized = [pad_and_resize(r.pixels, 896)[0] for r in rendered]
        rows.append((kind, "decode (bytes → RGB uint8)", _timeit(decode_any, items)))
        if kind.startswith("CXR"):
            rows.append(
                (
                    kind,
                    "decode floor: pydicom pixel_array only",
                    _timeit(lambda d: pydicom.dcmread(io.BytesIO(d)).pixel_array, items),
                )
            )
        else:
            rows.append(
                (
                    kind,
                    "decode floor: Pillow JPEG decode only",
                    _timeit(lambda d: Image.open(io.BytesIO(d)).load(), items),
                )
            )
        rows.append((kind, "pad + resize to 896", _timeit(lambda r: pad_and_resize(r.pixels, 896), rendered)))
        rows += encoder_rows(kind, resized)
        rows.append(
            (
                kind,
                "**per-item path** (decode → pad/resize → PNG level 1)",
                _timeit(lambda d: finish_rgb(decode_any(d).pixels, opts), items),
            )
        )
        rows.append((kind, "plain per-image loop (baseline)", _timeit(plain_loop, items)))
    return rows


def encoder_rows(kind: str, images: list) -> list[tuple[str, str, float]]:
    """Every encoder choice on the same 896×896 images, with mean sizes."""

    def pillow_png(im, level):
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    choices = [
        ("encode PNG level 1 (default: Sub filter + ISA-L)", lambda im: encode_image(im, "png", png_level=1)),
        ("encode PNG level 0 (Sub filter + ISA-L)", lambda im: encode_image(im, "png", png_level=0)),
        ("encode PNG, Pillow level 1 (the previous default)", lambda im: pillow_png(im, 1)),
        ("encode PNG, Pillow level 6 (zlib default)", lambda im: pillow_png(im, 6)),
        ("encode JPEG q95 4:4:4 (lossy)", lambda im: encode_image(im, "jpeg")),
        (
            "encode WebP lossless (method 0)",
            lambda im: (lambda b: (im.save(b, format="WEBP", lossless=True, method=0), b.getvalue())[1])(io.BytesIO()),
        ),
    ]
    rows = []
    for label, fn in choices:
        size = np.mean([len(fn(im)) for im in images]) / 1e3
        rows.append((kind, f"{label}, {size:.0f} kB", _timeit(fn, images)))
    return rows


# The workers are measured, whatever the run's size (medprep would otherwise run small runs in-process).
MP = ["--direct_running_mode=multi_processing", "--min_inputs_per_worker", "0"]


def whole_runs(
    pipeline: str, manifest: str, folder: str, unit: str, modes: list[tuple[str, list[str]]], extra: list[str] = ()
) -> list[tuple]:
    """Whole `medprep` runs in fresh processes: (label, units/s, seconds, peak MiB runner, peak MiB worker)."""
    from benchmarks.measure import run_measured

    rows = []
    for label, mode in modes:
        out = os.path.join(folder, f"out-{pipeline}-{len(rows)}")
        counts, m = run_measured(pipeline, "--input", manifest, "--output_dir", out, "--overwrite", *extra, *mode)
        n = counts[unit]
        rows.append(
            (
                f"{pipeline}: {n} {unit}, {label}",
                n / m["seconds"],
                m["seconds"],
                m["self_kb"] / 1024,
                m["children_kb"] / 1024,
            )
        )
    return rows


def image_manifest(paths: list[str], folder: str, n: int) -> str:
    """n rows over the generated files (cycled), each its own example."""
    manifest = os.path.join(folder, f"m{n}.jsonl")
    with open(manifest, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "image": paths[i % len(paths)], "text": f"report {i}"}) + "\n")
    return manifest


SCALING_MODES = [
    ("in-process", []),
    ("multi_processing, 1 worker", MP + ["--direct_num_workers=1"]),
    ("multi_processing, 2 workers", MP + ["--direct_num_workers=2"]),
]


def plain_ct_slice(path: str) -> bytes:
    """A straightforward per-slice CT script: pydicom, float HU, three np.clip windows, stack, resize, PNG."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    chans = [
        np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
        for lo, hi in ((-1024, 1024), (-135, 215), (0, 80))
    ]
    img = Image.fromarray(np.stack(chans, axis=-1)).resize((896, 896), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def volume_table(folder: str, n_slices: int) -> tuple[list[tuple[str, str, float]], str]:
    """CT 512×512 slices: per-slice stages, the plain loop, the floors. Returns rows and the series folder."""
    from medprep.samples import ct_body_slice, write_series
    from medprep.transforms.dicom_render import render_dataset
    from medprep.transforms.image import finish_rendered

    series = os.path.join(folder, "ct")
    rng = np.random.default_rng(0)

    def noisy(k: int) -> np.ndarray:  # real CT has quantum noise; a flat phantom would flatter PNG
        return (ct_body_slice(k, n_slices, 512) + rng.normal(0, 10, (512, 512))).astype(np.int16)

    paths = write_series(series, n_slices, values=noisy, shuffle_seed=None)
    datasets = [pydicom.dcmread(p) for p in paths]
    opts = ImageOptions()
    rendered = [render_dataset(ds) for ds in datasets]
    resized = [pad_and_resize(r.pixels, 896)[0] for r in rendered]
    kind = "CT slice 512×512 int16"
    rows = [
        (kind, "decode floor: read + pixel_array", _timeit(lambda p: pydicom.dcmread(p).pixel_array, paths)),
        (kind, "read + decode + 3 HU windows (LUT)", _timeit(lambda p: render_dataset(pydicom.dcmread(p)), paths)),
        (kind, "resize 512 → 896", _timeit(lambda r: pad_and_resize(r.pixels, 896), rendered)),
        *encoder_rows(kind, resized),
        (
            kind,
            "**per-slice path** (read → window → resize → PNG 1)",
            _timeit(lambda p: finish_rendered(render_dataset(pydicom.dcmread(p)), opts), paths),
        ),
        (kind, "plain per-slice loop (baseline, PNG default level)", _timeit(plain_ct_slice, paths)),
    ]
    return rows, series


def side_by_side(fns: dict, items: list, repeat: int = 3) -> dict[str, float]:
    """Seconds per item of each peer, run in turn on every item (so all see the same machine load, which on a
    shared machine moves by 2x within a minute): per item the best of `repeat`, then the mean over items."""
    best = {name: [float("inf")] * len(items) for name in fns}
    for _ in range(repeat):
        for i, it in enumerate(items):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(it)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    return {name: sum(times) / len(times) for name, times in best.items()}


def slide_table(folder: str) -> list[tuple[str, str, float]]:
    """Patches of a 16384x12288 synthetic SVS (0.25 µm/px): region reads by medprep's tifffile reader against
    OpenSlide, tiffslide and a plain tifffile + zarr slice (peers: same regions, run in turn), the plan and the
    per-patch path with each of medprep's readers against a plain loop, and the floor."""
    import openslide

    from medprep.samples import synthetic_slide_rgb, write_svs
    from medprep.transforms.slide import SlideOptions, plan_slide, read_patch
    from medprep.transforms.slide_reader import OpenSlideReader
    from medprep.transforms.slide_tiff import open_tiff_slide

    path = write_svs(os.path.join(folder, "bench.svs"), synthetic_slide_rgb(16384, 12288, seed=0), mpp=0.25)
    options = SlideOptions(max_patches=24, target_mpp=0.5)  # 20x: read from level 0, resize 0.5
    reader = open_tiff_slide(path)
    assert reader is not None, "the benchmark slide is an Aperio SVS: the tifffile reader takes it"
    before = OpenSlideReader(path)  # medprep's reader until issue 14
    plan = plan_slide(reader, options)
    patches = plan.patches
    slide = openslide.OpenSlide(path)

    def plain(p):  # read_region at level 0, convert, resize, PNG (what a straightforward script does)
        img = slide.read_region((p.x, p.y), 0, (1792, 1792)).convert("RGB").resize((896, 896), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    tiles = [Image.fromarray(reader.read(0, p.x, p.y, 1792, 1792)) for p in patches[:6]]
    jpeg_tiles = []
    for t in tiles:
        buf = io.BytesIO()
        t.save(buf, format="JPEG", quality=80)
        jpeg_tiles.append(buf.getvalue())
    kind = "SVS patch 896 @ 0.5 µm/px (from 1792² @ 0.25)"
    plans = side_by_side(
        {
            "plan (thumbnail, tissue, grid, sample) per slide, tifffile reader": lambda _: plan_slide(reader, options),
            "plan per slide, OpenSlide reader (before)": lambda _: plan_slide(before, options),
        },
        [0],
    )
    paths = side_by_side(
        {
            "**per-patch path** (read → resize → PNG 1), tifffile reader": lambda p: read_patch(
                reader, plan.choice.level, p, options
            ),
            "per-patch path, OpenSlide reader (before)": lambda p: read_patch(before, plan.choice.level, p, options),
            "plain read_region loop (baseline, PNG default level)": plain,
        },
        patches,
        repeat=2,
    )
    rows = [
        *[(kind, name, sec) for name, sec in plans.items()],
        *[(kind, name, sec) for name, sec in region_reads(path, patches, reader, slide).items()],
        (
            kind,
            "floor: one JPEG decode of the source area + resize + PNG-1 encode",
            _timeit(
                lambda j: encode_image(
                    Image.open(io.BytesIO(j)).convert("RGB").resize((896, 896), Image.BILINEAR), "png", png_level=1
                ),
                jpeg_tiles,
            ),
        ),
        *encoder_rows(kind, [read_patch(reader, plan.choice.level, p, options).image for p in patches[:8]]),
        *[(kind, name, sec) for name, sec in paths.items()],
    ]
    reader.close()
    before.close()
    slide.close()
    return rows


def region_reads(path: str, patches: list, reader, slide) -> dict[str, float]:
    """Seconds per 1792² level-0 region (one per patch), side by side: OpenSlide, tiffslide and tifffile + zarr
    (when installed: benchmark peers, not medprep dependencies) and medprep's tifffile reader."""
    import numpy as np

    size = (1792, 1792)
    peers = {
        "region read: OpenSlide read_region (RGBA)": lambda p: slide.read_region((p.x, p.y), 0, size),
        "region read: OpenSlide read_region → RGB array": lambda p: np.asarray(
            slide.read_region((p.x, p.y), 0, size).convert("RGB")
        ),
    }
    try:
        import tifffile
        import tiffslide
        import zarr
    except ImportError:
        print("(tiffslide / zarr not installed: `pip install tiffslide` adds their rows)")
    else:
        ts = tiffslide.TiffSlide(path)
        level0 = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
        peers["region read: tiffslide read_region (as_array)"] = lambda p: ts.read_region(
            (p.x, p.y), 0, size, as_array=True
        )
        peers["region read: plain tifffile + zarr slice"] = lambda p: np.asarray(
            level0[p.y : p.y + 1792, p.x : p.x + 1792]
        )
    peers["**region read: medprep tifffile reader**"] = lambda p: reader.read(0, p.x, p.y, *size)
    return side_by_side(peers, patches)


def text_table(folder: str) -> list[tuple[str, str, float]]:
    """The chat sequence of an 85-slice series with a ~2,000-token report: medprep's tokenizer (both sources)
    and, when transformers is installed, Gemma3Processor.apply_chat_template on the same conversation."""
    from medprep.samples.tokenizer import train_demo_tokenizer
    from medprep.transforms.chat import conversation, prompt_then_images
    from medprep.transforms.text import SentencePieceTokenizer

    model = os.path.join(folder, "demo.model")
    with open(model, "wb") as fh:
        fh.write(train_demo_tokenizer())
    tok = SentencePieceTokenizer.from_file(model)
    report = " ".join(f"Slice {k}: hypodense lesion in the liver, no intracranial haemorrhage." for k in range(85))
    messages = conversation(prompt_then_images("Write the findings.", 85, [f"SLICE {n}" for n in range(1, 86)]), report)
    kind = f"85-slice series, report {len(tok.encode(report)[0])} tokens"
    rows = [
        (
            kind,
            f"medprep chat ids ({len(tok.chat(messages).input_ids)} ids, SentencePiece .model)",
            _timeit(tok.chat, [messages], repeat=5),
        )
    ]
    try:
        import sys

        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from hf_reference import hf_processor
    except ImportError:
        return rows
    processor = hf_processor(model, os.path.join(folder, "hf"))
    processor.tokenizer.save_pretrained(os.path.join(folder, "hf_saved"))
    from medprep.pipelines.io.tokenizer import load_tokenizer

    rows.append(
        (
            kind,
            "medprep chat ids (tokenizer.json folder)",
            _timeit(load_tokenizer(os.path.join(folder, "hf_saved")).chat, [messages], repeat=5),
        )
    )
    rows.append(
        (
            kind,
            "transformers: render + expand + tokenize (apply_chat_template, tokenize=False, then tokenizer)",
            _timeit(
                lambda m: processor.tokenizer(
                    processor.apply_chat_template(m, tokenize=False).replace(
                        "<start_of_image>", processor.full_image_sequence
                    ),
                    add_special_tokens=False,
                ),
                [messages],
                repeat=5,
            ),
        )
    )
    return rows


def print_rows(header: str, rows) -> None:
    print(f"| input | stage | {header} (1 core) | ms/item |\n|---|---|---|---|")
    for kind, stage, sec in rows:
        print(f"| {kind} | {stage} | {1 / sec:.1f} | {sec * 1e3:.1f} |")
    print()


def print_runs(rows) -> None:
    print(
        "| whole run | items/s | seconds | peak RSS runner (MiB) | peak RSS largest worker (MiB) |\n"
        "|---|---|---|---|---|"
    )
    for label, rate, sec, runner, worker in rows:
        print(
            f"| {label} | {rate:.1f} | {sec:.1f} | {runner:.0f} | {worker:.0f} |"
            if worker
            else f"| {label} | {rate:.1f} | {sec:.1f} | {runner:.0f} | (in the runner) |"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12, help="images per kind for the stage table")
    ap.add_argument("--pipeline-n", type=int, default=400, help="manifest rows for whole-pipeline runs")
    ap.add_argument("--slices", type=int, default=40, help="slices in the CT series for the volume table")
    ap.add_argument("--only", choices=("images", "volumes", "slides", "text"), default=None, help="run one part only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "text"):
            print_rows("series/s", text_table(d))
        if args.only in (None, "slides"):
            print_rows("patches/s", slide_table(d))
            from medprep.samples import synthetic_slide_rgb, write_svs

            slides = [
                write_svs(os.path.join(d, f"s{i}.svs"), synthetic_slide_rgb(16384, 12288, seed=i), mpp=0.25)
                for i in range(4)
            ]
            manifest = os.path.join(d, "slides.jsonl")
            with open(manifest, "w") as fh:
                for i, p in enumerate(slides):
                    fh.write(json.dumps({"id": f"s{i}", "image": p, "text": "tissue", "patient_id": f"p{i}"}) + "\n")
            runs = whole_runs("slides", manifest, d, "images", SCALING_MODES, ["--target_mpp", "0.5"])
            os.environ["MEDPREP_SLIDE_READERS"] = "openslide"  # the peer: medprep's reader before issue 14
            try:
                before = whole_runs("slides", manifest, d, "images", SCALING_MODES[:1], ["--target_mpp", "0.5"])
            finally:
                del os.environ["MEDPREP_SLIDE_READERS"]
            print_runs(runs + [(f"{label}, OpenSlide reader (before)", *rest) for label, *rest in before])
        if args.only in (None, "volumes"):
            rows, series = volume_table(d, args.slices)
            print_rows("slices/s", rows)
            manifest = os.path.join(d, "v.jsonl")
            with open(manifest, "w") as fh:
                for i in range(8):
                    row = {"id": f"s{i}", "image": series, "text": f"r{i}", "patient_id": f"p{i}"}
                    fh.write(json.dumps(row) + "\n")
            print_runs(whole_runs("volumes", manifest, d, "images", SCALING_MODES, ["--max_slices", "40"]))
        if args.only in (None, "images"):
            dicoms, photos, paths = make_inputs(d, args.n)
            print_rows("images/s", stage_table(dicoms, photos))
            print_runs(whole_runs("images", image_manifest(paths, d, args.pipeline_n), d, "images", SCALING_MODES))


if __name__ == "__main__":
    main()
