"""`medprep demo`: generate the bundled samples and run the pipelines on them."""

from __future__ import annotations

import json
import os

from medprep.samples import make_images_samples, make_slide_samples, make_volume_samples
from medprep.samples.tokenizer import train_demo_tokenizer

# Two of the images rows are broken on purpose (they show errors/ at work): above the default error budget.
_COMMON = ["--val_fraction", "0.2", "--test_fraction", "0.2", "--split_salt", "demo-salt", "--overwrite"]
_COMMON += ["--max_error_fraction", "0.5"]


def _report(name: str, out: str, summary: dict) -> None:
    print(
        f"{name}: {summary['inputs']} inputs -> {summary['examples']} examples, {summary['images']} images, "
        f"{summary['errors']} errors {summary['errors_by_stage']}; reconciled={summary['reconciled']}"
    )
    print(
        f"  outputs in {out}: arrayrecord/ parquet/ errors/ summary.json preview.png; "
        f"tasks {json.dumps(summary['by_task'])}"
    )


def main(output_dir: str) -> int:
    """Samples and a demo tokenizer into OUT/samples; pipeline outputs into OUT/images, OUT/volumes, OUT/slides."""
    from medprep.pipelines.cli.main import run_pipeline

    # Manifests name their files by path, and relative references resolve against the manifest's
    # own folder: write absolute paths so `--output_dir demo_out` works from any directory.
    output_dir = os.path.abspath(output_dir)
    samples = os.path.join(output_dir, "samples")
    tokenizer = os.path.join(samples, "demo.model")
    images_manifest = make_images_samples(samples)
    volumes_manifest = make_volume_samples(samples)
    slides_manifest = make_slide_samples(samples)
    with open(tokenizer, "wb") as fh:
        fh.write(train_demo_tokenizer())
    ok = True
    for name, manifest, extra in (
        ("images", images_manifest, []),
        ("volumes", volumes_manifest, ["--slice_selection", "uniform", "--max_slices", "16"]),
        ("slides", slides_manifest, ["--max_patches", "8", "--granularity", "slide,patch"]),
    ):
        out = os.path.join(output_dir, name)
        summary = run_pipeline(
            name, ["--input", manifest, "--output_dir", out, "--tokenizer", tokenizer, *_COMMON, *extra]
        )
        _report(name, out, summary)
        ok = ok and summary["reconciled"]
    return 0 if ok else 1
