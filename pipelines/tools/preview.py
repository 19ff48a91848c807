"""preview.png: a contact sheet of sampled output images with their captions."""

from __future__ import annotations

import io
import textwrap

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


def contact_sheet(samples: list[tuple[str, bytes, str]]) -> bytes:
    """[(id, encoded image, caption)] -> PNG bytes of a grid of thumbnails with captions."""
    font = ImageFont.load_default()
    rows = max(1, -(-len(samples) // COLUMNS))
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if not samples:
        draw.text((8, 8), "no examples were written", fill=(0, 0, 0), font=font)
    for i, (_, data, caption) in enumerate(samples):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * cell_h
        try:
            thumb = Image.open(io.BytesIO(data)).convert("RGB")
            thumb.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y))
        except Exception:  # a preview must never fail the run
            draw.text((x + 8, y + 8), "(undecodable)", fill=(200, 0, 0), font=font)
        lines = []
        for paragraph in caption.splitlines():
            lines += textwrap.wrap(paragraph, 40) or [""]
        for j, line in enumerate(lines[:CAPTION_LINES]):
            draw.text((x + 4, y + TILE + 4 + j * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return encode_image(sheet, "png", png_level=1)  # the fast encoder: ~20× Pillow's default level here
