"""One 2D image, any source, to its model-ready form: decode -> RGB uint8 -> pad+resize -> encode.

This is the code path the images pipeline runs per image and `prepare_image` runs at
inference time, so both produce byte-identical encoded images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medprep.transforms.chat import images_then_prompt, user_messages
from medprep.transforms.dicom_io import read_dataset
from medprep.transforms.dicom_render import Rendered, RenderOptions, render_dataset
from medprep.transforms.encode import DEFAULT_JPEG_QUALITY, DEFAULT_PNG_LEVEL, IMAGE_FORMATS, encode_image
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.formats import PHOTO_FORMATS, detect_format
from medprep.transforms.geometry import PadResize, pad_and_resize
from medprep.transforms.option_fields import int_in, option
from medprep.transforms.photo import decode_photo

DEFAULT_IMAGE_SIZE = 896  # MedGemma / Gemma 3 input side

ImageSource = str | os.PathLike[str] | bytes | Dataset | Image.Image | np.ndarray


@dataclass(frozen=True)
class ImageOptions:
    """Output geometry and encoding (size in pixels, png|jpeg) plus DICOM render options."""

    size: int = option(
        DEFAULT_IMAGE_SIZE, f"output side in pixels (default {DEFAULT_IMAGE_SIZE})", int_in(16, 8192), name="image_size"
    )
    image_format: str = option("png", "png (lossless, default) or jpeg", choices=IMAGE_FORMATS)
    png_level: int = option(
        DEFAULT_PNG_LEVEL,
        f"PNG zlib level 0-9 (default {DEFAULT_PNG_LEVEL}: fastest lossless; see benchmarks/README.md)",
        int_in(0, 9),
    )
    jpeg_quality: int = option(
        DEFAULT_JPEG_QUALITY, f"JPEG quality 1-100 (default {DEFAULT_JPEG_QUALITY})", int_in(1, 100)
    )
    render: RenderOptions = RenderOptions()


@dataclass
class FinishedImage:
    """A model-ready image: PIL RGB size×size, its encoded bytes, the pad/resize plan, info."""

    image: Image.Image | None  # None after without_pixels()
    encoded: bytes
    plan: PadResize
    info: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)

    def without_pixels(self) -> FinishedImage:
        """The same image without its decoded pixels (image=None): what records need, 1/6 the memory."""
        return replace(self, image=None)


class ImageDecoder(Protocol):
    """Encoded bytes of one format -> Rendered (uint8 grey or RGB, info, raw identifiers for scrubbing only)."""

    def __call__(self, data: bytes, options: ImageOptions) -> Rendered: ...


def _dicom(data: bytes, options: ImageOptions) -> Rendered:
    return render_dataset(read_dataset(data), options.render)


def _photo(data: bytes, options: ImageOptions) -> Rendered:
    rgb, info = decode_photo(data, options.render.max_pixels)
    return Rendered(pixels=rgb, info=info, identifiers={})


# Format (transforms.formats.detect_format) -> decoder. A new 2D format is a decoder plus one line here.
IMAGE_DECODERS: dict[str, ImageDecoder] = {"dicom": _dicom, **{fmt: _photo for fmt in sorted(PHOTO_FORMATS)}}


def decode_any(data: bytes, name: str = "", options: ImageOptions = ImageOptions()) -> Rendered:
    """Encoded bytes (DICOM or photo) -> Rendered RGB uint8 with info."""
    fmt = detect_format(data, name)
    if fmt in IMAGE_DECODERS:
        return IMAGE_DECODERS[fmt](data, options)
    if not data:
        raise ItemError("decode", "file is empty")
    raise ItemError("decode", f"unsupported file format ({fmt}) for a 2D image")


def finish_rgb(pixels: np.ndarray, options: ImageOptions = ImageOptions()) -> tuple[Image.Image, bytes, PadResize]:
    """uint8 RGB (H, W, 3) or grey (H, W) -> (PIL RGB image size×size, encoded bytes, plan).

    Shared by every pipeline."""
    with stage("transform"):
        try:
            img, plan = pad_and_resize(pixels, options.size)
        except ValueError as exc:
            raise ItemError("transform", str(exc)) from None
    with stage("encode"):
        try:
            encoded = encode_image(
                img, options.image_format, png_level=options.png_level, jpeg_quality=options.jpeg_quality
            )
        except (OSError, ValueError) as exc:
            raise ItemError("encode", f"cannot encode {options.image_format}: {exc}") from None
    return img, encoded, plan


def finish_rendered(rendered: Rendered, options: ImageOptions = ImageOptions()) -> FinishedImage:
    """Rendered -> FinishedImage, the pad/resize plan recorded in info."""
    img, encoded, plan = finish_rgb(rendered.pixels, options)
    info = dict(rendered.info)
    info["pad_resize"] = plan.to_dict()
    return FinishedImage(img, encoded, plan, info, rendered.identifiers)


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ItemError("read", f"cannot read {path}: {exc.strerror or exc}") from None


def load_rendered(source: ImageSource, options: ImageOptions = ImageOptions()) -> Rendered:
    """Any supported source (path, bytes, pydicom Dataset, PIL image, RGB array) -> Rendered."""
    if isinstance(source, Dataset):
        return render_dataset(source, options.render)
    if isinstance(source, Image.Image):
        return Rendered(pixels=np.asarray(source.convert("RGB")), info={"format": "pil"})
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise ItemError("decode", f"array input must be uint8 (H, W, 3), got {source.dtype} {source.shape}")
        return Rendered(pixels=source, info={"format": "array"})
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_any(bytes(source), "", options)
    path = os.fspath(source)
    return decode_any(_read_local(path), path, options)


@dataclass
class Prepared:
    """What inference code feeds a processor: images, encoded bytes, info, chat messages (role messages)."""

    images: list[Image.Image]
    encoded: list[bytes]
    image_info: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def prepare_image(
    source: ImageSource | list[ImageSource] | tuple[ImageSource, ...],
    prompt: str = "",
    options: ImageOptions = ImageOptions(),
    system_prompt: str = "",
) -> Prepared:
    """One image (or [prior, current] for longitudinal CXR) -> model-ready images and the chat messages
    (images, then the prompt; the records' messages without the response)."""
    from medprep.transforms.inference import pick

    options, system_prompt = pick(options, "image", system_prompt)
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    finished = [finish_rendered(load_rendered(s, options), options) for s in sources]
    images = cast(list[Image.Image], [f.image for f in finished])  # finished here: each has its image
    messages = user_messages(images_then_prompt(len(images), prompt), images, system_prompt)
    return Prepared(images, [f.encoded for f in finished], [f.info for f in finished], messages)
