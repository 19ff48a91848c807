"""preview.png: thumbnails decoded in threads land in their cells; an undecodable sample is marked, not fatal."""

import io

import numpy as np
from PIL import Image

from medprep.pipelines.tools.preview import CAPTION_LINES, COLUMNS, LINE_HEIGHT, TILE, contact_sheet


def _png(seed: int, size=(300, 200)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_each_cell_holds_its_own_thumbnail_and_a_bad_sample_is_marked():
    samples = [(f"e{i}", _png(i), f"caption {i}") for i in range(6)]
    samples.insert(2, ("bad", b"not an image", "broken"))
    sheet = Image.open(io.BytesIO(contact_sheet(samples)))
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    assert sheet.size == (COLUMNS * TILE, 2 * cell_h)
    grid = np.asarray(sheet.convert("RGB"))
    for i, (_, data, _) in enumerate(samples):
        x, y = (i % COLUMNS) * TILE, (i // COLUMNS) * cell_h
        if data == b"not an image":
            cell = grid[y : y + TILE, x : x + TILE].astype(int)
            red = (cell[..., 0] > cell[..., 1] + 60) & (cell[..., 0] > cell[..., 2] + 60)
            assert red.sum() > 20  # the red "(undecodable)" mark (antialiased text)
            continue
        expected = Image.open(io.BytesIO(data)).convert("RGB")
        expected.thumbnail((TILE, TILE), Image.Resampling.BILINEAR)
        left = x + (TILE - expected.width) // 2
        np.testing.assert_array_equal(grid[y : y + expected.height, left : left + expected.width], np.asarray(expected))
