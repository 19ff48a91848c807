"""Whole-slide images to model-ready patches: resolution, tissue, grid, sampling, and the inference API.

Defaults are the MedGemma 1.5 pathology reference (DESIGN.md): 10x (1.0 µm/px), 896×896 patches
with stride 896, tissue at ~1.25x (8 µm/px) by mean grey in [1, 204], up to 125 patches per
slide sampled with a seed; the prompt comes first, then the patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from PIL import Image

from medprep.transforms.chat import Message, prompt_then_images, user_messages
from medprep.transforms.dicom_render import Rendered
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.image import FinishedImage, ImageOptions, finish_rendered
from medprep.transforms.option_fields import fraction, int_in, option, positive_float
from medprep.transforms.patches import Patch, grid, sample_patches, select_patches
from medprep.transforms.slide_reader import SlideReader
from medprep.transforms.tissue import otsu_saturation_mask
from medprep.transforms.wsi_level import LevelChoice, choose_level

TISSUE_METHODS = ("mean_grey", "otsu")


@dataclass(frozen=True)
class SlideOptions:
    """Target resolution (µm/px), patch geometry (target pixels), tissue rule, sampling."""

    image: ImageOptions = ImageOptions()
    target_mpp: float = option(1.0, "patch resolution in µm/px (default 1, ~10x)", positive_float)
    patch_size: int = option(896, "patch side in pixels at --target_mpp (default 896)", int_in(16, 8192))
    stride: int = option(
        0, "grid step in pixels at --target_mpp (default: --patch_size, patches edge to edge)", int_in(1, 8192)
    )
    tissue: str = option(
        "mean_grey",
        "mean_grey (reference: mean grey in [1, 204] at ~1.25x) or otsu (saturation, pen marks removed)",
        choices=TISSUE_METHODS,
    )
    min_tissue: float = option(0.5, "otsu: minimum tissue fraction of a patch (default 0.5)", fraction)
    max_patches: int = option(125, "patches sampled per slide, seeded (default 125)", int_in(1))
    seed: int = option(0, "sampling seed (default 0)", int_in(0))
    thumb_mpp: float = 8.0
    assume_mpp: float | None = option(
        None, "resolution to use for slides that declare none (otherwise they are errors)", positive_float
    )
    override_mpp: float | None = None  # replaces the slide's resolution (a manifest row's `mpp`)


@dataclass
class SlidePlan:
    """What to read: the level, the chosen patches (level-0 boxes), and the thumbnail/mask for previews."""

    choice: LevelChoice
    patches: list[Patch]
    candidates: int
    thumbnail: np.ndarray
    thumb_downsample: float
    mask: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def plan_slide(reader: SlideReader, options: SlideOptions = SlideOptions()) -> SlidePlan:
    """Level for the target mpp, tissue on the thumbnail, grid, filter, seeded sample (tile-row order)."""
    if reader.mpps[0] is None:
        raise ItemError("transform", "the slide declares no resolution (µm/px); pass --assume_mpp to process it")
    choice = choose_level(reader.mpps, options.target_mpp)
    thumb, downsample = reader.thumbnail(options.thumb_mpp)
    mask = otsu_saturation_mask(thumb) if options.tissue == "otsu" else None
    w0, h0 = reader.dimensions[0]
    boxes = grid(w0, h0, options.patch_size, options.stride or options.patch_size, reader.mpps[0], options.target_mpp)
    kept = select_patches(boxes, thumb, downsample, options.tissue, mask, options.min_tissue)
    if not kept:
        raise ItemError("transform", f"no tissue found ({len(boxes)} grid cells checked, rule {options.tissue})")
    chosen = sample_patches(kept, options.max_patches, options.seed)
    info = {
        "level": choice.level,
        "level_mpp": choice.level_mpp,
        "target_mpp": options.target_mpp,
        "resize": round(choice.scale, 6),
        "grid_cells": int(len(boxes)),
        "tissue_cells": len(kept),
        "sampled": len(chosen),
        "tissue_rule": options.tissue,
        "mpp_source": reader.mpp_source,
    }
    return SlidePlan(choice, chosen, len(kept), thumb, downsample, mask, info)


def read_patch(reader: SlideReader, level: int, patch: Patch, options: SlideOptions = SlideOptions()) -> FinishedImage:
    """One patch: read at `level` (the plan's), resized to patch_size at the target mpp, then finished."""
    side = max(1, int(round(patch.size0 / reader.downsamples[level])))
    with stage("read"):
        rgb = reader.read(level, patch.x, patch.y, side, side)
    if side != options.patch_size:
        with stage("transform"):
            rgb = np.asarray(
                Image.fromarray(rgb).resize((options.patch_size, options.patch_size), Image.Resampling.BILINEAR)
            )
    finished = finish_rendered(Rendered(pixels=rgb, info={"format": "slide"}), options.image)
    finished.info.update(
        {
            "x": patch.x,
            "y": patch.y,
            "size0": round(patch.size0, 3),
            "level": level,
            "mpp": options.target_mpp,
            "tissue": patch.tissue,
            "read_side": side,
        }
    )
    return finished


@dataclass
class PreparedSlide:
    """Model-ready patches of one slide and the chat messages (prompt first, then the patches)."""

    images: list[Image.Image]
    encoded: list[bytes]
    image_info: list[dict[str, Any]]
    messages: list[Message]
    plan: SlidePlan


def prepare_slide(
    path: str, prompt: str = "", options: SlideOptions = SlideOptions(), system_prompt: str = ""
) -> PreparedSlide:
    """A slide file -> the same patches and messages the slides pipeline writes (`options`: SlideOptions or a
    run's InferenceOptions)."""
    from medprep.transforms.inference import pick
    from medprep.transforms.slide_reader import open_slide

    options, system_prompt = pick(options, "slide", system_prompt)
    if "://" not in path and not os.path.exists(path):
        raise ItemError("read", f"cannot read {path}: file not found")
    reader = open_slide(path, options.assume_mpp, options.override_mpp)
    try:
        plan = plan_slide(reader, options)
        finished = [read_patch(reader, plan.choice.level, p, options) for p in plan.patches]
    finally:
        reader.close()
    images = cast(list[Image.Image], [f.image for f in finished])  # finished here: each has its image
    messages = user_messages(prompt_then_images(prompt, len(images)), images, system_prompt)
    return PreparedSlide(images, [f.encoded for f in finished], [f.info for f in finished], messages, plan)
