"""`medprep embed` on CPU: images/s by batch size against a plain per-image loop, and where the time goes.

    .venv/bin/python -m benchmarks.embed_bench [--n 64] [--pipeline-n 256] [--base-n 16] [--base-pipeline-n 48]
                                               [--models tiny,base]

Models (randomly initialised from a transformers config, saved with a SigLIP image processor; nothing is
downloaded; 224x224 input, patch 16):
- tiny: the tests' SigLIP (hidden 32, 2 layers, 48 k parameters): a forward pass costs almost nothing,
  so this measures medprep's own overhead;
- base: ViT-B/16 sizes (hidden 768, 12 layers, 12 heads, MLP 3072; ~93 M parameters with SigLIP's
  pooling head), the size class of real encoders (MedSigLIP's vision tower is ~400 M at 448x448).

Measures (best of two passes):
- preprocessing of one medprep output image (PNG, as `medprep images` writes it at 224 and 896) on one
  core: PNG decode, then the model's image processor (transformers' own call) against medprep's table
  path (the same values: a per-channel table of the processor's own rescale/normalize), for processors
  of 224, 448 and 896 input;
- plain loop: what a straightforward script does, one image at a time: PIL decode, the model's own
  image processor (AutoImageProcessor), model(pixel_values).pooler_output;
- embed_images at batch sizes 1, 8, 32: the same decode + processor per image, one forward per batch;
  the time outside the forward pass (decode + processor) is reported as a share;
- the whole pipeline (`medprep embed`'s graph on the in-process DirectRunner, pooled embeddings, both
  formats) over a `medprep images` output of --pipeline-n PNG images: wall time from pipeline start
  (model load included) to the committed outputs, and the share of it inside the forward pass (the
  pipeline's `forward_ms` metric).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

MODELS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}
SIDE = 224


def make_model(kind: str, folder: str, side: int = SIDE) -> str:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    path = os.path.join(folder, f"siglip-{kind}-{side}")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(image_size=side, patch_size=16, **MODELS[kind])).save_pretrained(path)
    SiglipImageProcessorPil(size={"height": side, "width": side}).save_pretrained(path)
    return path


def make_pngs(folder: str, n: int) -> list[str]:
    """n photo-like 300x260 PNGs (smooth shapes plus noise; medprep pads and resizes them to 224)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:260, 0:300].astype(np.float32)
    paths = []
    for i in range(n):
        base = 120 + 80 * np.sin(x / (9 + i % 7)) * np.cos(y / (11 + i % 5))
        rgb = np.stack([base, base * 0.8 + 30, 255 - base], axis=-1) + rng.normal(0, 6, (260, 300, 3))
        path = os.path.join(folder, f"img{i:04d}.png")
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def prepared_output(folder: str, n: int) -> str:
    """A `medprep images` output of n images at 224x224 (PNG level 1, as the pipeline writes)."""
    from medprep.pipelines.cli.main import run_pipeline

    os.makedirs(folder, exist_ok=True)
    paths = make_pngs(folder, n)
    manifest = os.path.join(folder, "m.jsonl")
    with open(manifest, "w") as fh:
        fh.write(
            "".join(
                json.dumps({"id": str(i), "image": p, "text": "t", "label": str(i % 2)}) + "\n"
                for i, p in enumerate(paths)
            )
        )
    out = os.path.join(folder, "prepared")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, "--image_size", str(SIDE), "--split_salt", "b"])
    return out


def preprocessing_rows(folder: str) -> list[str]:
    """Markdown rows: ms per image for the PNG decode, the processor itself and the table path."""
    from medprep.transforms.embed import decode_image, load_encoder
    from medprep.transforms.image import ImageOptions, prepare_image

    pre = os.path.join(folder, "pre")
    os.makedirs(pre, exist_ok=True)
    src = make_pngs(pre, 1)[0]
    encoders = {side: load_encoder(make_model("tiny", pre, side), device="cpu") for side in (224, 448, 896)}
    rows = []
    for out_side in (224, 896):
        data = prepare_image(src, options=ImageOptions(size=out_side)).encoded[0]
        image = decode_image(data)
        decode_ms = 1000 * best(lambda d=data: [decode_image(d) for _ in range(10)], repeat=3) / 10
        for side, encoder in encoders.items():
            slow = 1000 * best(lambda e=encoder, i=image: [e.processor_pixel_values(i) for _ in range(5)], repeat=3) / 5
            fast = 1000 * best(lambda e=encoder, i=image: [e.pixel_values(i) for _ in range(5)], repeat=3) / 5
            rows.append(
                f"| {out_side}² PNG ({len(data) / 1024:.0f} kB) | {side}² | {decode_ms:.1f} | {slow:.1f} | {fast:.1f} |"
            )
    return rows


def best(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_loop(images: list[bytes], folder: str) -> float:
    import torch
    from transformers import AutoImageProcessor, SiglipVisionModel

    model = SiglipVisionModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")

    def run():
        with torch.inference_mode():
            for data in images:
                pixels = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
                model(pixel_values=pixels).pooler_output.numpy()

    return best(run)


def batched(images: list[bytes], encoder, batch_size: int) -> tuple[float, float]:
    """(seconds in total, seconds outside the forward pass) for embed_images' path at one batch size."""
    from medprep.transforms.embed import decode_image

    def run():
        outside = 0.0
        for start in range(0, len(images), batch_size):
            t0 = time.perf_counter()
            pixels = np.stack([encoder.pixel_values(decode_image(d)) for d in images[start : start + batch_size]])
            t1 = time.perf_counter()
            encoder.forward(pixels, "pooled")
            outside += t1 - t0
        run.outside = outside

    run.outside = 0.0
    runs = []
    for _ in range(2):
        seconds = best(run, repeat=1)
        runs.append((seconds, run.outside))
    return min(runs)


def whole_run(prepared: str, model: str, batch_size: int, out: str) -> tuple[float, float, float, int]:
    """(wall seconds, forward seconds, preprocess seconds, embeddings) of the pipeline, in-process."""
    from medprep.pipelines.cli.runner import run
    from medprep.pipelines.graphs.embed import build
    from medprep.pipelines.graphs.metrics import query_metrics
    from medprep.pipelines.io.commit import commit_outputs
    from medprep.pipelines.tools.embed_cli import config_from_args, parse

    args, beam_args = parse(
        ["--input", prepared, "--model", model, "--output_dir", out, "--batch_size", str(batch_size), "--overwrite"]
    )
    config = config_from_args(args)
    start = time.perf_counter()
    result = run(build, config, beam_args)
    commit_outputs(config.staging_dir, config.output_dir)
    wall = time.perf_counter() - start
    counters, distributions = query_metrics(result)
    forward = sum(total for (_, name), (_, total, _, _) in distributions.items() if name == "forward_ms") / 1000
    pre = sum(total for (_, name), (_, total, _, _) in distributions.items() if name == "preprocess_ms") / 1000
    rows = json.load(open(os.path.join(out, "summary.json")))["embeddings"]
    return wall, forward, pre, rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="tiny model: images for the loop and batch-size table")
    ap.add_argument("--pipeline-n", type=int, default=256, help="tiny model: images in the whole runs")
    ap.add_argument("--base-n", type=int, default=16, help="base model: images for the loop and batch-size table")
    ap.add_argument("--base-pipeline-n", type=int, default=48, help="base model: images in the whole runs")
    ap.add_argument("--models", default="tiny,base", help="comma-separated: tiny, base")
    args = ap.parse_args()
    from medprep.pipelines.tools.embed_cli import _load_model  # noqa: F401  (imports Beam's ML stack once)
    from medprep.schemas import read_records
    from medprep.transforms.embed import load_encoder

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="medprep-embed-bench-") as folder:
        print("\n| medprep image | model input | PNG decode ms | image processor ms | medprep table path ms |")
        print("|---|---|---|---|---|")
        print("\n".join(preprocessing_rows(folder)))
        sizes = {"tiny": (args.n, args.pipeline_n), "base": (args.base_n, args.base_pipeline_n)}
        prepared = {n: prepared_output(os.path.join(folder, f"in{n}"), n) for _, n in sizes.values()}
        images = [
            img for rec in read_records(os.path.join(prepared[max(prepared)], "arrayrecord")) for img in rec["images"]
        ]
        print(
            f"inputs: PNG images {SIDE}x{SIDE} from `medprep images`, mean "
            f"{np.mean([len(i) for i in images]) / 1024:.0f} kB"
        )
        print("\n| model | path | images/s | ms/image | time outside the forward pass |")
        print("|---|---|---|---|---|")
        runs = []
        for kind in args.models.split(","):
            model = make_model(kind, folder)
            encoder = load_encoder(model, device="cpu")
            sample = images[: sizes[kind][0]]
            seconds = plain_loop(sample, model)
            print(
                f"| {kind} | plain loop, one image at a time | {len(sample) / seconds:.1f} | "
                f"{1000 * seconds / len(sample):.2f} | |"
            )
            for bs in (1, 8, 32):
                total, outside = batched(sample, encoder, bs)
                print(
                    f"| {kind} | embed_images, batch {bs} | {len(sample) / total:.1f} | "
                    f"{1000 * total / len(sample):.2f} | {100 * outside / total:.0f} % |"
                )
            for bs in (8, 32):
                wall, forward, pre, rows = whole_run(
                    prepared[sizes[kind][1]], model, bs, os.path.join(folder, f"emb-{kind}-{bs}")
                )
                runs.append((kind, bs, rows, wall, forward, pre))
        if "tiny" in args.models.split(",") and len(prepared) > 1:
            # the same model over the smaller output: the difference is the cost per image without fixed costs
            small = min(prepared)
            wall, forward, pre, rows = whole_run(
                prepared[small], make_model("tiny", folder), 32, os.path.join(folder, "emb-tiny-small")
            )
            big = next(r for r in runs if r[0] == "tiny" and r[1] == 32)
            runs.append(("tiny", "32, fixed cost: a run of", rows, wall, forward, pre))
            runs.append(
                (
                    "tiny",
                    f"32, per added image ({big[2]} - {rows} images)",
                    big[2] - rows,
                    big[3] - wall,
                    big[4] - forward,
                    big[5] - pre,
                )
            )
        print(
            "\n| model | whole run (in-process), batch | images | seconds | images/s | in forward "
            "| decode + processor | rest (start-up, model load, rows, shards) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for kind, bs, rows, wall, forward, pre in runs:
            print(
                f"| {kind} | {bs} | {rows} | {wall:.2f} | {rows / wall:.1f} | {100 * forward / wall:.0f} % | "
                f"{100 * pre / wall:.0f} % | {100 * (wall - forward - pre) / wall:.0f} % |"
            )


if __name__ == "__main__":
    main()
