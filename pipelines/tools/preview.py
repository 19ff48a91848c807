"""preview.png: a contact sheet of sampled output images with their captions."""

from __future__ import annotations

import io
import os
import textwrap
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw, ImageFont

from medprep.transforms.encode import encode_image

TILE = 256
CAPTION_LINES = 4
LINE_HEIGHT = 14
COLUMNS = 4


def caption_of(record: dict) -> str:
    """A short caption: modality, task, image count and the start of the text."""
    head = f"{record['modality']} · {record['task']} · {len(record['images'])} img · {record['split']}"
    return head + "\n" + (record["text"] or record["label"] or record["prompt"])


def thumbnail(data: bytes) -> Image.Image | None:
    """An encoded image as an RGB thumbnail of at most TILE² pixels; None when it does not decode."""
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
        return image
    except Exception:  # a preview must never fail the run
        return None


def contact_sheet(samples: list[tuple[str, bytes, str]]) -> bytes:
    """[(id, encoded image, caption)] -> PNG bytes of a grid of thumbnails with captions."""
    font = ImageFont.load_default()
    # Decoding is most of the sheet's time (~20 ms per 896² PNG) and Pillow releases the GIL for it.
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        thumbs = list(pool.map(thumbnail, [data for _, data, _ in samples]))
    rows = max(1, -(-len(samples) // COLUMNS))
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not samples:
        draw.text((8, 8), "no examples were written", fill=(0, 0, 0), font=font)
    for i, ((_, _, caption), thumb) in enumerate(zip(samples, thumbs)):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * cell_h
        if thumb is None:
            draw.text((x + 8, y + 8), "(undecodable)", fill=(200, 0, 0), font=font)
        else:
            sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y))
        lines = []
        for paragraph in caption.splitlines():
            lines += textwrap.wrap(paragraph, 40) or [""]
        for j, line in enumerate(lines[:CAPTION_LINES]):
            draw.text((x + 4, y + TILE + 4 + j * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return encode_image(sheet, "png", png_level=1)  # the fast encoder: ~20× Pillow's default level here
