"""Pure per-item transforms (no Beam): what the pipelines run and what inference imports."""
from transforms.errors import ItemError
from transforms.image import ImageOptions, Prepared, prepare_image

__all__ = ["ItemError", "ImageOptions", "Prepared", "prepare_image"]
