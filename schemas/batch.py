"""Records -> the model-ready batch Gemma3Processor builds: input_ids, attention_mask, token_type_ids,
labels and pixel_values, as numpy arrays (torch.from_numpy / jnp.asarray them as they are)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medprep.schemas.model_input import to_model_input

IGNORE_INDEX = -100  # what Hugging Face's losses skip


def image_token_id(output_dir: str) -> int:
    """The image soft token's id in a finished output (summary.json's tokenizer description)."""
    with open(os.path.join(output_dir, "summary.json"), encoding="utf-8") as fh:
        info = json.load(fh)["config"].get("tokenizer_info") or {}
    token = (info.get("special_ids") or {}).get("image_soft_token")
    if token is None:
        raise ValueError(f"{output_dir}: the run had no chat tokenizer (summary.json has no image_soft_token id)")
    return int(token)


def _pad(rows: Sequence[Sequence[int]], value: int, length: int, left: bool) -> np.ndarray:
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, row in enumerate(rows):
        if left:
            out[i, length - len(row) :] = row
        else:
            out[i, : len(row)] = row
    return out


def model_batch(
    records: Sequence[dict[str, Any]],
    image_token: int,
    pad_id: int = 0,
    padding_side: str = "left",
    image_size: int = 896,
) -> dict[str, np.ndarray]:
    """Records (with input_ids) -> {input_ids, attention_mask, token_type_ids, labels (int64, B×L),
    pixel_values (float32, images×3×size×size in [-1, 1], in record then image order)}.

    input_ids/attention_mask/token_type_ids/pixel_values equal Gemma3Processor's output for the records'
    messages and images (padding on the tokenizer's side: left for Gemma); labels are input_ids where
    loss_mask is 1 and -100 elsewhere (prompt, images, padding)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    if any(not r["input_ids"] for r in records):
        raise ValueError("a record has no input_ids (the run had no chat tokenizer)")
    length = max(len(r["input_ids"]) for r in records)
    left = padding_side == "left"
    ids = _pad([r["input_ids"] for r in records], pad_id, length, left)
    attention = _pad([[1] * len(r["input_ids"]) for r in records], 0, length, left)
    mask = _pad([r["loss_mask"] for r in records], 0, length, left)
    images = [to_model_input(img, image_size, channels_first=True) for r in records for img in r["images"]]
    pixels = np.stack(images) if images else np.zeros((0, 3, image_size, image_size), np.float32)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "token_type_ids": (ids == image_token).astype(np.int64) * attention,
        "labels": np.where(mask == 1, ids, IGNORE_INDEX),
        "pixel_values": pixels,
    }
