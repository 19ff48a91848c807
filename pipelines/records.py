"""Assemble a record (schemas.fields) from finished images and text; shared by every pipeline."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipelines.config import PIPELINE_VERSION, Config
from pipelines.privacy import keyed_hash
from pipelines.split import assign_split
from schemas.fields import validate_record
from transforms.errors import ItemError
from transforms.image import FinishedImage
from transforms.scrub import scrub_text
from transforms.text import IMAGE, Part, Tokenizer


@dataclass
class ExampleParts:
    """Everything a record needs besides the config and tokenizer."""

    example_key: str          # raw, unique per example (hashed before output)
    modality: str
    task: str
    images: Sequence[FinishedImage]
    sources: Sequence[str]
    prompt: str = ""
    text: str = ""
    patient_id: str = ""      # raw (hashed before output)
    study_uid: str = ""       # raw (hashed before output)
    boxes: Sequence[Sequence[float]] = ()
    box_labels: Sequence[str] = ()
    label: str = ""
    # The user turn in order: IMAGE markers, strings, and the token "PROMPT" where the prompt goes.
    user_parts: Sequence[object] = field(default_factory=list)
    identifiers: dict = field(default_factory=dict)   # raw header identifiers (scrubbing only)
    burned_in: bool = False                           # a source declares BurnedInAnnotation=YES


PROMPT = object()  # placeholder in user_parts for the (truncated) prompt ids


def default_user_parts(n_images: int) -> list:
    """Images first, then the prompt (the 2D reference order)."""
    return [IMAGE] * n_images + [PROMPT]


_ID_KEYS = ("PatientID", "AccessionNumber", "OtherPatientIDs", "PatientBirthDate", "InstitutionName")
_NAME_KEYS = ("PatientName", "ReferringPhysicianName", "OperatorsName")


def apply_privacy(parts: ExampleParts, config: Config) -> dict:
    """Refuse burned-in annotation (unless allowed); scrub prompt/text when asked. Returns scrub counts."""
    if parts.burned_in and not config.allow_burned_in:
        raise ItemError("privacy", "DICOM declares BurnedInAnnotation=YES (identifiers may be in the pixels); "
                                   "skipped — pass --allow_burned_in to keep it")
    if not config.scrub_text:
        return {}
    ids = [parts.identifiers.get(k, "") for k in _ID_KEYS] + [parts.patient_id]
    names = [parts.identifiers.get(k, "") for k in _NAME_KEYS]
    totals: dict = {}
    for attr in ("prompt", "text"):
        clean, counts = scrub_text(getattr(parts, attr), ids, names)
        setattr(parts, attr, clean)
        for kind, n in counts.items():
            totals[f"scrubbed/{kind}"] = totals.get(f"scrubbed/{kind}", 0) + n
    return totals


def build_record(parts: ExampleParts, config: Config, tokenizer: Tokenizer | None) -> tuple[dict, dict]:
    """ExampleParts -> (record dict, stats counts). Raises ItemError('privacy'|'text'|'record')."""
    scrubbed = apply_privacy(parts, config)
    salt = config.salt
    patient_key = keyed_hash(salt, "patient", parts.patient_id or "example:" + parts.example_key)
    prompt_ids: list[int] = []
    text_ids: list[int] = []
    input_ids: list[int] = []
    loss_mask: list[int] = []
    truncated_prompt = truncated_text = False
    if tokenizer is not None:
        prompt_ids, truncated_prompt = tokenizer.encode(parts.prompt, config.max_text_tokens)
        text_ids, truncated_text = tokenizer.encode(parts.text, config.max_text_tokens)
        if tokenizer.is_gemma3:
            user: list[Part] = [prompt_ids if p is PROMPT else p for p in (parts.user_parts or default_user_parts(len(parts.images)))]
            chat = tokenizer.chat_ids(user, text_ids)
            input_ids, loss_mask = chat.input_ids, chat.loss_mask
    boxes = [[float(np.float32(c)) for c in box] for box in parts.boxes]
    infos = []
    for img, src in zip(parts.images, parts.sources):
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
        "prompt_ids": prompt_ids,
        "text_ids": text_ids,
        "input_ids": input_ids,
        "loss_mask": loss_mask,
        "boxes": boxes,
        "box_labels": list(parts.box_labels),
        "label": parts.label,
        "source": list(parts.sources),
        "config_hash": config.config_hash,
        "pipeline_version": PIPELINE_VERSION,
    }
    try:
        validate_record(record)
    except ValueError as exc:
        raise ItemError("record", str(exc)) from None
    stats = {
        "examples": 1,
        "images": len(parts.images),
        f"by_split/{record['split']}": 1,
        f"by_task/{parts.task}": 1,
        f"by_modality/{parts.modality}": 1,
        "truncated/prompt": int(truncated_prompt),
        "truncated/text": int(truncated_text),
        **scrubbed,
    }
    return record, stats
