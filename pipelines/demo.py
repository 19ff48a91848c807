"""`medprep demo`: generate the bundled samples and run the pipelines on them."""
from __future__ import annotations

import json
import os

from pipelines.samples import make_images_samples
from pipelines.tokenizer_training import train_demo_tokenizer


def main(output_dir: str) -> int:
    """Write samples to OUT/samples, a tokenizer to OUT/samples/demo.model, outputs to OUT/images."""
    from pipelines.cli import run_pipeline

    samples = os.path.join(output_dir, "samples")
    manifest = make_images_samples(samples)
    tokenizer = os.path.join(samples, "demo.model")
    with open(tokenizer, "wb") as fh:
        fh.write(train_demo_tokenizer())
    out = os.path.join(output_dir, "images")
    summary = run_pipeline("images", ["--input", manifest, "--output_dir", out, "--tokenizer", tokenizer,
                                      "--val_fraction", "0.2", "--test_fraction", "0.2",
                                      "--split_salt", "demo-salt", "--overwrite"])
    print(f"images: {summary['inputs']} inputs -> {summary['examples']} examples, "
          f"{summary['errors']} errors ({summary['errors_by_stage']}); reconciled={summary['reconciled']}")
    print(f"outputs in {out}: arrayrecord/ parquet/ errors/ summary.json preview.png")
    print(json.dumps(summary["by_task"]))
    return 0 if summary["reconciled"] else 1
