"""Pure per-item transforms (no Beam): what the pipelines run and what inference imports."""
from transforms.errors import ItemError
from transforms.image import ImageOptions, Prepared, prepare_image
from transforms.slide import PreparedSlide, SlideOptions, prepare_slide
from transforms.volume import PreparedSeries, VolumeOptions, prepare_series

__all__ = ["ItemError", "ImageOptions", "Prepared", "prepare_image", "PreparedSeries", "VolumeOptions",
           "prepare_series", "PreparedSlide", "SlideOptions", "prepare_slide"]
