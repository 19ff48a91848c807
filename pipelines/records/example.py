"""Assemble a record (medprep.schemas.fields) from finished images and text; shared by every pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medprep.pipelines.config import PIPELINE_VERSION, Config
from medprep.pipelines.records.identifiers import identifier_hit_message, record_identifier_hits
from medprep.pipelines.records.privacy import keyed_hash
from medprep.pipelines.records.split import assign_split
from medprep.schemas.fields import validate_record
from medprep.transforms.chat import conversation, images_then_prompt, prompt_then_images
from medprep.transforms.dicom_io import ID_KEYWORDS, NAME_KEYWORDS
from medprep.transforms.errors import ItemError, strip_credentials
from medprep.transforms.image import FinishedImage
from medprep.transforms.text import Tokenizer


@dataclass
class ExampleParts:
    """Everything a record needs besides the config and tokenizer."""

    example_key: str  # raw, unique per example (hashed before output)
    modality: str
    task: str
    images: Sequence[FinishedImage]
    sources: Sequence[str]  # references relative to the manifest (as written), one per image
    prompt: str = ""
    text: str = ""
    patient_id: str = ""  # raw (hashed before output)
    study_uid: str = ""  # raw (hashed before output)
    boxes: Sequence[Sequence[float]] = ()
    box_labels: Sequence[str] = ()
    label: str = ""
    # The user turn's order: "images_first" (2D: images, then the prompt) or "prompt_first" (volumes, slides:
    # the prompt, then each image followed by its label, e.g. "SLICE n").
    layout: str = "images_first"
    labels: Sequence[str] = ()
    input_key: str = ""  # the input this example comes from: its patient key when no patient id is known
    identifiers: dict = field(default_factory=dict)  # raw header identifiers (scrubbing and checking only)
    burned_in: bool = False  # a source declares BurnedInAnnotation=YES
    extra_names: Sequence[str] = ()  # name-like manifest values (scrubbing only)


def row_input_key(row: dict) -> str:
    """The key of one manifest row's input: its id, else its references as written (never a row number, so
    the same image listed twice shares a patient key; never a resolved path, so it moves with the data)."""
    return (
        "id:" + row["id"]
        if row.get("id")
        else "refs:"
        + "|".join(strip_credentials(r) for r in ([row["prior"]] if row.get("prior") else []) + list(row["images"]))
    )


def name_values(row: dict) -> list[str]:
    """Values of the row's name-like extra manifest columns (patient_name, physician, …), for scrubbing only."""
    extra = row.get("extra") or {}
    if not extra:
        return []
    from medprep.transforms.scrub import name_like_columns

    return [str(extra[c]) for c in name_like_columns(list(extra)) if extra[c]]


def portable_ref(path: str, written: str, resolved: str) -> str:
    """A file found under an input reference, named from the reference as the manifest wrote it."""
    if path == resolved or not path.startswith(resolved.rstrip("/") + "/"):
        return path if path != resolved else written
    return written.rstrip("/") + path[len(resolved.rstrip("/")) :]


def output_source(ref: str, config: Config) -> str:
    """What `source` holds for a reference: its salted hash; with --keep_source the reference relative to the
    manifest's folder (an absolute local path is made relative; credentials are always removed)."""
    ref = strip_credentials(ref)
    if not config.keep_source:
        return keyed_hash(config.salt, "source", ref)
    if "://" in ref or not os.path.isabs(ref):
        base = config.input.rsplit("/", 1)[0] + "/" if "://" in config.input else ""
        return ref[len(base) :] if base and ref.startswith(base) else ref
    return os.path.relpath(ref, os.path.dirname(os.path.abspath(config.input)))


def apply_privacy(parts: ExampleParts, config: Config) -> dict:
    """Refuse burned-in annotation (unless allowed); scrub every free-text field when asked. Returns scrub counts."""
    if parts.burned_in and not config.allow_burned_in:
        raise ItemError(
            "privacy",
            "DICOM declares BurnedInAnnotation=YES (identifiers may be in the pixels); "
            "skipped — pass --allow_burned_in to keep it",
        )
    if not config.scrub_text:
        return {}
    from medprep.transforms.scrub import scrub_text  # its patterns compile on import: only runs that scrub pay

    ids = [parts.identifiers.get(k, "") for k in ID_KEYWORDS] + [parts.patient_id]
    names = [parts.identifiers.get(k, "") for k in NAME_KEYWORDS] + list(parts.extra_names)
    totals: dict = {}

    def scrub(value: str) -> str:
        clean, counts = scrub_text(value, ids, names)
        for kind, n in counts.items():
            if n:
                totals[f"scrubbed/{kind}"] = totals.get(f"scrubbed/{kind}", 0) + n
        return clean

    parts.prompt, parts.text, parts.label = scrub(parts.prompt), scrub(parts.text), scrub(parts.label)
    parts.box_labels = [scrub(label) for label in parts.box_labels]
    return totals


def _user_content(parts: ExampleParts, prompt: str) -> list:
    if parts.layout == "prompt_first":
        return prompt_then_images(prompt, len(parts.images), parts.labels)
    return images_then_prompt(len(parts.images), prompt)


def _text_fields(parts: ExampleParts, config: Config, tokenizer: Tokenizer | None) -> tuple[dict, dict]:
    """messages, prompt_ids, text_ids, input_ids, loss_mask (+ truncation counts) of one example.

    Prompt and response are truncated to --max_text_tokens; `messages` holds what was tokenized, so
    input_ids == apply_chat_template(messages) for every record."""
    prompt, text = parts.prompt, parts.text
    fields: dict = {"prompt_ids": [], "text_ids": [], "input_ids": [], "loss_mask": []}
    truncated = {"truncated/prompt": 0, "truncated/text": 0}
    if tokenizer is not None:
        prompt, fields["prompt_ids"], cut_prompt = tokenizer.truncate(prompt, config.max_text_tokens)
        text, fields["text_ids"], cut_text = tokenizer.truncate(text, config.max_text_tokens)
        truncated = {"truncated/prompt": int(cut_prompt), "truncated/text": int(cut_text)}
    messages = conversation(_user_content(parts, prompt), text, config.system_prompt)
    if tokenizer is not None and tokenizer.can_chat and not config.text_ids_only:
        try:
            chat = tokenizer.chat(messages)
        except ValueError as exc:
            raise ItemError("text", str(exc)) from None
        fields["input_ids"], fields["loss_mask"] = chat.input_ids, chat.loss_mask
    fields["messages"] = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return fields, truncated


def build_record(parts: ExampleParts, config: Config, tokenizer: Tokenizer | None) -> tuple[dict, dict]:
    """ExampleParts -> (record dict, stats counts). Raises ItemError('privacy'|'text'|'record').

    A record holding one of its own header identifier values or its patient id in any field is refused
    (ItemError('privacy'), see records/identifiers.py); every record built is counted as checked.
    The patient key is the patient id's hash, else the input's: every record of one input shares it, and so
    its split. `source` and image_info's `source` are the references' salted hashes (see output_source)."""
    scrubbed = apply_privacy(parts, config)
    salt = config.salt
    patient_key = keyed_hash(salt, "patient", parts.patient_id or "input:" + (parts.input_key or parts.example_key))
    text_fields, truncated = _text_fields(parts, config, tokenizer)
    boxes = [[float(np.float32(c)) for c in box] for box in parts.boxes]
    sources = [output_source(src, config) for src in parts.sources]
    infos = []
    for img, src in zip(parts.images, sources):
        info = dict(img.info)
        info["source"] = src
        infos.append(json.dumps(info, sort_keys=True, separators=(",", ":")))
    record = {
        "example_id": keyed_hash(salt, "example", parts.example_key)[:32],
        "modality": parts.modality,
        "task": parts.task,
        "split": assign_split(patient_key, config.val_fraction, config.test_fraction),
        "patient_key": patient_key,
        "study_key": keyed_hash(salt, "study", parts.study_uid),
        "images": [img.encoded for img in parts.images],
        "image_info": infos,
        "prompt": parts.prompt,
        "text": parts.text,
        **text_fields,
        "boxes": boxes,
        "box_labels": list(parts.box_labels),
        "label": parts.label,
        "source": sources,
        "config_hash": config.config_hash,
        "pipeline_version": PIPELINE_VERSION,
    }
    hits = record_identifier_hits(record, parts.identifiers, parts.patient_id)
    if hits:  # the input becomes one error line: the dataset never holds its own identifiers
        raise ItemError("privacy", identifier_hit_message(hits))
    try:
        validate_record(record)
    except ValueError as exc:
        raise ItemError("record", str(exc)) from None
    stats = {
        "examples": 1,
        "identifier_checked": 1,
        "images": len(parts.images),
        f"by_split/{record['split']}": 1,
        f"by_task/{parts.task}": 1,
        f"by_modality/{parts.modality}": 1,
        **truncated,
        **scrubbed,
    }
    return record, stats
