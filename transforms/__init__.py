"""Pure per-item transforms (no Beam): what the pipelines run and what inference imports."""

from medprep.transforms.errors import ItemError
from medprep.transforms.image import ImageOptions, Prepared, prepare_image
from medprep.transforms.slide import PreparedSlide, SlideOptions, prepare_slide
from medprep.transforms.volume import PreparedSeries, VolumeOptions, prepare_series

__all__ = [
    "ItemError",
    "ImageOptions",
    "Prepared",
    "prepare_image",
    "PreparedSeries",
    "VolumeOptions",
    "prepare_series",
    "PreparedSlide",
    "SlideOptions",
    "prepare_slide",
]
