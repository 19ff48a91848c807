"""A finished run's options for serving: the pixels and chat of `prepare_image`, `prepare_series` and
`prepare_slide` then match the run's records (medprep.load_options builds one from an output folder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions
from medprep.transforms.volume import VolumeOptions


@dataclass(frozen=True)
class InferenceOptions:
    """Image, volume and slide options and the system prompt of one run."""

    image: ImageOptions = ImageOptions()
    volume: VolumeOptions = VolumeOptions()
    slide: SlideOptions = SlideOptions()
    system_prompt: str = ""


def pick(options: Any, kind: str, system_prompt: str) -> tuple[Any, str]:
    """(the `kind` options, the system prompt) from either those options or a whole InferenceOptions."""
    if isinstance(options, InferenceOptions):
        return getattr(options, kind), system_prompt or options.system_prompt
    return options, system_prompt
