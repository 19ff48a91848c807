"""The embedding row: one per embedded image, keyed by (example_id, image_index) of the record it came from.

A second field list beside `schemas.fields` (the prepared records'); `medprep embed` writes these rows.
Kinds and the Python value of each in a row as written (readers turn `floats` into numpy arrays):
    str     str              int        int            float   float
    floats  list/array of float32       int_list   list[int]
"""

from __future__ import annotations

from typing import Any

from medprep.schemas.fields import Field

EMBEDDING_KINDS = ("str", "int", "float", "floats", "int_list")

EMBEDDING_FIELDS: tuple[Field, ...] = (
    Field("example_id", "str", "the record's example_id"),
    Field("image_index", "int", "index of the image in the record's `images`"),
    Field("split", "str", "the record's split"),
    Field("modality", "str", "the record's modality"),
    Field("task", "str", "the record's task (slide and patch rows are a slide's feature bag)"),
    Field("patient_key", "str", "the record's patient_key"),
    Field("label", "str", "the record's label (may be empty)"),
    Field(
        "source",
        "str",
        "this image's source: its image_info source (salted hash, or the reference "
        "relative to the manifest with --keep_source)",
    ),
    Field("image_info", "str", "the record's image_info JSON for this image"),
    Field("coords", "int_list", "slide patches: level-0 [x, y] of the patch's top-left corner; else empty"),
    Field("patch_size0", "float", "slide patches: the patch's side in level-0 pixels; else 0"),
    Field("mpp", "float", "slide patches: micrometres per pixel of the patch; else 0"),
    Field("embedding", "floats", "pooled embedding (float32; empty with --pooling tokens)"),
    Field("tokens", "floats", "token grid, row-major rows x cols x dim (float32; empty with --pooling pooled)"),
    Field("token_shape", "int_list", "[rows, cols, dim] of `tokens`; empty with --pooling pooled"),
    Field("model", "str", "model name (the model folder's name, or --model_name)"),
    Field("model_hash", "str", "SHA-256 of the encoder's weights, config.json and preprocessor_config.json"),
    Field("dtype", "str", "float32 | float16 | bfloat16: the dtype the encoder ran in (values are stored as float32)"),
    Field("image_size", "int_list", "[height, width] of the model input"),
    Field("normalization", "str", "JSON: the image processor's resize, rescale and mean/std"),
    Field("record_config_hash", "str", "config_hash of the record the image came from"),
    Field("pipeline_version", "str", "medprep version that wrote the row"),
)

EMBEDDING_FIELD_BY_NAME = {f.name: f for f in EMBEDDING_FIELDS}
EMBEDDING_FIELD_NAMES = tuple(f.name for f in EMBEDDING_FIELDS)


def empty_embedding_value(kind: str) -> Any:
    """The value a missing field decodes to."""
    return {"str": "", "int": 0, "float": 0.0}.get(kind, [])


def validate_embedding_row(row: dict[str, Any]) -> None:
    """Raise ValueError if the row's keys or value types do not match EMBEDDING_FIELDS."""
    import numpy as np

    missing = set(EMBEDDING_FIELD_NAMES) - set(row)
    extra = set(row) - set(EMBEDDING_FIELD_NAMES)
    if missing or extra:
        raise ValueError(f"embedding row fields mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for f in EMBEDDING_FIELDS:
        v = row[f.name]
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, float),
            "floats": isinstance(v, (list, np.ndarray)),
            "int_list": isinstance(v, list),
        }[f.kind]
        if not ok:
            raise ValueError(f"{f.name} must be of kind {f.kind}, got {type(v).__name__}")
    shape = row["token_shape"]
    if len(row["tokens"]) != (int(np.prod(shape)) if shape else 0):
        raise ValueError(f"tokens holds {len(row['tokens'])} values, token_shape {shape} says otherwise")
