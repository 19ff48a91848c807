"""The one definition of a medprep record: field names, kinds and their Arrow/HF types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# kind -> meaning of the Python value in a decoded record
#   str        str                         int_list   list[int]
#   str_list   list[str]                   mask       list[int] (0/1)
#   images     list[bytes] (encoded)       boxes      list[[x0, y0, x1, y1]] float32 values
KINDS = ("str", "str_list", "int_list", "mask", "images", "boxes")


@dataclass(frozen=True)
class Field:
    """A record field: its name (Parquet column = tf.Example key), kind and description."""

    name: str
    kind: str
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("example_id", "str", "stable id: salted hash of the input row's id"),
    Field("modality", "str", "DICOM Modality (CT, MR, CR, DX…), or photo/fundus/derm/SM"),
    Field("task", "str", "image_text | longitudinal | localization | classification | series | slide | patch"),
    Field("split", "str", "train | val | test, by salted patient hash"),
    Field("patient_key", "str", "HMAC-SHA-256 of the patient id (never the raw id)"),
    Field("study_key", "str", "HMAC-SHA-256 of the StudyInstanceUID (never the raw UID)"),
    Field("images", "images", "encoded model-ready images (PNG by default), in chat order"),
    Field("image_info", "str_list", "JSON per image: source, geometry (pad_resize), intensity, slice/patch info"),
    Field("prompt", "str", "user prompt text (may be empty)"),
    Field("text", "str", "response text: report, caption, answer, or rendered boxes"),
    Field("prompt_ids", "int_list", "SentencePiece ids of prompt (truncated to --max_text_tokens)"),
    Field("text_ids", "int_list", "SentencePiece ids of text (truncated to --max_text_tokens)"),
    Field(
        "input_ids",
        "int_list",
        "the chat sequence: messages rendered by the chat template, images expanded, "
        "tokenized at once (= processor.apply_chat_template(messages, tokenize=True))",
    ),
    Field("loss_mask", "mask", "1 where input_ids is the response (and its <end_of_turn>), else 0"),
    Field(
        "messages",
        "str",
        "the conversation as JSON: [{role, content: [{type: image} | {type: text, text}]}], "
        "images as placeholders in the order of `images`",
    ),
    Field("boxes", "boxes", "normalized x0,y0,x1,y1 in the output (padded, resized) frame"),
    Field("box_labels", "str_list", "one label per box"),
    Field("label", "str", "classification label (may be empty)"),
    Field(
        "source",
        "str_list",
        "salted hash of each image's reference (--keep_source: the reference relative to the manifest)",
    ),
    Field("config_hash", "str", "SHA-256 of the processing configuration"),
    Field("pipeline_version", "str", "medprep version that wrote the record"),
)

FIELD_BY_NAME = {f.name: f for f in FIELDS}
FIELD_NAMES = tuple(f.name for f in FIELDS)


def empty_value(kind: str) -> str | list[Any]:
    """The value a missing field decodes to."""
    return "" if kind == "str" else []


def validate_record(record: dict[str, Any]) -> None:
    """Raise ValueError if the record's keys or value types do not match FIELDS."""
    missing = set(FIELD_NAMES) - set(record)
    extra = set(record) - set(FIELD_NAMES)
    if missing or extra:
        raise ValueError(f"record fields mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for f in FIELDS:
        v = record[f.name]
        if f.kind == "str" and not isinstance(v, str):
            raise ValueError(f"{f.name} must be str, got {type(v).__name__}")
        if f.kind != "str" and not isinstance(v, list):
            raise ValueError(f"{f.name} must be a list, got {type(v).__name__}")
        if f.kind == "boxes" and any(len(b) != 4 for b in v):
            raise ValueError(f"{f.name}: every box needs 4 coordinates")
