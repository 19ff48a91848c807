"""The medprep record: one schema, its tf.train.Example and Parquet forms, and readers.

The names load on first use, so that inference code importing `to_model_input` (numpy and Pillow)
does not pay for pyarrow, array_record or Grain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers see the real names; at run time each module loads on first use
    from medprep.schemas.arrow import arrow_schema, hf_features, to_table
    from medprep.schemas.batch import IGNORE_INDEX, image_token_id, model_batch
    from medprep.schemas.example_codec import decode_example, encode_example
    from medprep.schemas.fields import FIELD_NAMES, FIELDS, validate_record
    from medprep.schemas.model_input import to_model_input
    from medprep.schemas.readers import ArrayRecordSource, arrayrecord_files, grain_source, hf_dataset, read_records

_MODULES = {
    "arrow": ("arrow_schema", "hf_features", "to_table"),
    "batch": ("IGNORE_INDEX", "image_token_id", "model_batch"),
    "example_codec": ("decode_example", "encode_example"),
    "fields": ("FIELD_NAMES", "FIELDS", "validate_record"),
    "model_input": ("to_model_input",),
    "readers": ("ArrayRecordSource", "arrayrecord_files", "grain_source", "hf_dataset", "read_records"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "FIELDS",
    "FIELD_NAMES",
    "validate_record",
    "encode_example",
    "decode_example",
    "arrow_schema",
    "hf_features",
    "to_table",
    "read_records",
    "ArrayRecordSource",
    "grain_source",
    "arrayrecord_files",
    "hf_dataset",
    "to_model_input",
    "model_batch",
    "image_token_id",
    "IGNORE_INDEX",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name not in _HOME:
        raise AttributeError(f"module 'medprep.schemas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"medprep.schemas.{_HOME[name]}"), name)
