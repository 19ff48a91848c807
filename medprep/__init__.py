"""medprep: imaging data preparation for MedGemma-style vision-language models.

The public API, importable without Beam:

    from medprep import prepare_image, prepare_series, prepare_slide      # inference-time
    from medprep import read_records, grain_source, to_model_input, model_batch, load_options

The code lives in three subpackages: medprep.transforms (pure per-item code), medprep.schemas (the
record and its readers) and medprep.pipelines (Beam graphs, I/O, the command line).
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the real signatures; at run time the names load on first use
    from medprep.pipelines.options_io import load_options
    from medprep.schemas.batch import image_token_id, model_batch
    from medprep.schemas.model_input import to_model_input
    from medprep.schemas.readers import grain_source, hf_dataset, read_records
    from medprep.transforms.image import ImageOptions, prepare_image
    from medprep.transforms.inference import InferenceOptions
    from medprep.transforms.slide import SlideOptions, prepare_slide
    from medprep.transforms.volume import VolumeOptions, prepare_series

# In a source checkout the subpackages are the top-level folders transforms/, schemas/, pipelines/
# (installed, setup.py maps them under medprep/): let this package find them there too.
_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "setup.py")) and _os.path.isdir(_os.path.join(_ROOT, "transforms")):
    __path__.append(_ROOT)

_API = {
    "prepare_image": "medprep.transforms.image",
    "ImageOptions": "medprep.transforms.image",
    "prepare_series": "medprep.transforms.volume",
    "VolumeOptions": "medprep.transforms.volume",
    "prepare_slide": "medprep.transforms.slide",
    "SlideOptions": "medprep.transforms.slide",
    "read_records": "medprep.schemas.readers",
    "grain_source": "medprep.schemas.readers",
    "hf_dataset": "medprep.schemas.readers",
    "to_model_input": "medprep.schemas.model_input",
    "model_batch": "medprep.schemas.batch",
    "image_token_id": "medprep.schemas.batch",
    "load_options": "medprep.pipelines.options_io",
    "InferenceOptions": "medprep.transforms.inference",
}
__all__ = [
    "ImageOptions",
    "InferenceOptions",
    "SlideOptions",
    "VolumeOptions",
    "grain_source",
    "hf_dataset",
    "image_token_id",
    "load_options",
    "model_batch",
    "prepare_image",
    "prepare_series",
    "prepare_slide",
    "read_records",
    "to_model_input",
]


def __getattr__(name: str) -> Any:
    """Import the public names on first use (importing medprep stays cheap)."""
    if name not in _API:
        raise AttributeError(f"module 'medprep' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
