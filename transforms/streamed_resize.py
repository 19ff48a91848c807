"""Pillow's BILINEAR resize of an RGB uint8 image that is never held whole: fed block by block, exact.

Pillow (Resample.c) resizes in two separable passes, horizontal then vertical, each with fixed-point weights:
for output pixel i of a pass from n to m pixels, scale = n / m, support = max(scale, 1) (the bilinear
filter's support, 1, widened when reducing), the input window [trunc(c - support + 0.5), trunc(c + support
+ 0.5)) around c = (i + 0.5)·scale clamped to [0, n), weights 1 - |x + 0.5 - c| / support normalized to sum
1 and rounded to integers of 22 fractional bits; each output is (Σ weight·pixel + 2²¹) >> 22 clamped to
0–255, the horizontal pass rounded to uint8 before the vertical one reads it.

Both passes here are the same sums, fed a chunk of the input at a time and accumulating every output whose
window a chunk touches; an output is rounded as soon as its window has been seen. The sums are integers
and exact: bilinear weights are >= 0 and an output's sum to about 2²², so a product weight·pixel and any part
of one output's sum stay below 2³⁰ (int32), totals are int64; the result equals Image.resize(…, BILINEAR)
byte for byte (tests hold it against Pillow). What is held: one block of the input, the horizontally
reduced rows of one band, and the outputs still open.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
FEED_VALUES = 1 << 18  # values a pass multiplies at once (int32 products: 1 MB)


def pillow_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first input pixel of each output's window, its length, the integer weights (out_size, taps), held in
    float64) of Pillow's BILINEAR pass from in_size to out_size pixels, computed as Resample.c computes them."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support (1) times filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first
    k = np.arange(taps)
    x = np.abs(((k[None, :] + first[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where((k[None, :] < count[:, None]) & (x < 1.0), 1.0 - x, 0.0)
    total = np.add.accumulate(w, axis=1)[:, -1]  # summed left to right, as Resample.c does
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)
    scaled = w * (1 << PRECISION_BITS)
    return first, count, np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))


def _round(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8: (sum + 2²¹) >> 22, clamped to 0–255."""
    rounded: np.ndarray = np.clip((sums + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)
    return rounded.astype(np.uint8)


def _layers(
    weights: tuple[np.ndarray, np.ndarray, np.ndarray], in_size: int, repeat: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pass's weights by input pixel: layer m gives each pixel its m-th output (in order) with a non-zero
    weight and that weight, (output (in_size,), weight (in_size,)); a pixel without one has weight 0 and the
    output before it. Outputs never go backwards along a layer, so a layer is runs of pixels per output.
    `repeat` repeats each weight (3: one per channel of interleaved RGB)."""
    first, _, w = weights
    out, tap = np.nonzero(w)
    pixel = first[out] + tap
    order = np.lexsort((out, pixel))
    out, pixel, value = out[order], pixel[order], w[out[order], tap[order]]
    rank = np.arange(len(pixel)) - np.searchsorted(pixel, pixel, side="left")
    layers = []
    for m in range(int(rank.max()) + 1 if len(rank) else 0):
        at = rank == m
        outputs = np.full(in_size, -1, np.int64)
        values = np.zeros(in_size, np.int32)
        outputs[pixel[at]], values[pixel[at]] = out[at], value[at]
        layers.append((np.maximum.accumulate(np.maximum(outputs, 0)), np.repeat(values, repeat)))
    return layers


class _Pass:
    """One axis' pass fed consecutive chunks of its input (uint8 (rows, columns, 3), the pass along `axis`); each
    feed returns the outputs whose windows it completed, in order, as (outputs, other axis, 3) uint8.

    Each layer's products are summed per run of pixels sharing an output (np.add.reduceat): about two
    multiply-adds per input value, elementwise (no BLAS threads to wait on)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], end: np.ndarray, axis: int, across: int):
        self.layers, self.end, self.axis = layers, end, axis
        self.done = 0  # outputs returned so far; self.open holds the sums of the next ones
        self.open = np.zeros((0, across, 3), np.int64)

    def feed(self, chunk: np.ndarray, start: int) -> np.ndarray:
        stop = start + chunk.shape[self.axis]
        for outputs, values in self.layers:
            runs = np.flatnonzero(np.diff(outputs[start:stop], prepend=-1))
            if self.axis == 0:  # int32: weight·pixel < 2³⁰
                products = chunk * values[start:stop, None, None]
            else:  # each weight repeated for the 3 channels: one contiguous multiply (4x faster than broadcasting)
                products = (chunk.reshape(len(chunk), -1) * values[3 * start : 3 * stop]).reshape(chunk.shape)
            sums = np.add.reduceat(products, runs, axis=self.axis, dtype=np.int32)  # part of one output: < 2³⁰
            targets = outputs[start:stop][runs] - self.done
            live = targets >= 0  # a run of an output already returned holds only weights 0 (pixels without one)
            if targets[-1] >= len(self.open):
                grow = np.zeros((targets[-1] + 1 - len(self.open), *self.open.shape[1:]), np.int64)
                self.open = np.concatenate([self.open, grow])
            sums, targets = (sums if self.axis == 0 else sums.transpose(1, 0, 2))[live], targets[live]
            if len(targets) and targets[-1] - targets[0] + 1 == len(targets):  # consecutive outputs: a slice
                self.open[targets[0] : targets[-1] + 1] += sums
            else:
                self.open[targets] += sums
        finished = int(np.searchsorted(self.end, stop, side="right"))
        out = _round(self.open[: finished - self.done])
        self.open = self.open[finished - self.done :]
        self.done = finished
        return out


def streamed_resize(
    read: Callable[[int, int, int, int], np.ndarray],
    size: tuple[int, int],
    out_size: tuple[int, int],
    block: tuple[int, int] = (512, 512),
) -> np.ndarray:
    """Image.fromarray(whole).resize(out_size, BILINEAR) for an RGB uint8 image (width, height) = size read
    as `read(x, y, width, height)` blocks of at most `block` (width, height), left to right in bands top to
    bottom (each pixel read once); equal to Pillow's result byte for byte."""
    (w, h), (ow, oh), (bw, bh) = size, out_size, block
    horizontal, vertical = pillow_weights(w, ow), pillow_weights(h, oh)
    across_layers, across_end = _layers(horizontal, w, 3), horizontal[0] + horizontal[1]
    down = _Pass(_layers(vertical, h), vertical[0] + vertical[1], 0, ow)
    out = np.empty((oh, ow, 3), np.uint8)
    row = 0
    for top in range(0, h, bh):
        rows = min(bh, h - top)
        across = _Pass(across_layers, across_end, 1, rows)
        band = np.empty((rows, ow, 3), np.uint8)  # this band's rows, horizontally resized
        col = 0
        step = max(1, FEED_VALUES // (rows * 3))  # a wide block (a full-width strip) goes in a few columns at a time
        for left in range(0, w, bw):
            pixels = read(left, top, min(bw, w - left), rows)
            for part in range(0, pixels.shape[1], step):
                done = across.feed(pixels[:, part : part + step], left + part)
                band[:, col : col + len(done)] = done.transpose(1, 0, 2)
                col += len(done)
        down_step = max(1, FEED_VALUES // (ow * 3))  # the vertical pass takes the band a few rows at a time
        for part in range(0, rows, down_step):
            done = down.feed(band[part : part + down_step], top + part)
            out[row : row + len(done)] = done
            row += len(done)
    return out
