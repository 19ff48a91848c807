"""Load the tokenizer named by --tokenizer (local or gs://): a SentencePiece .model, a tokenizer.json, or a
Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja)."""

from __future__ import annotations

import json
import posixpath

from medprep.pipelines.io.sources.files import exists, read_bytes
from medprep.transforms.text import HuggingFaceFiles, HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if "://" in folder else f"{folder.rstrip('/')}/{name}"


def _dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/"))


def _optional_text(path: str) -> str | None:
    return read_bytes(path).decode("utf-8") if exists(path) else None


def _template(folder: str, config: dict) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's, else chat_template.json's."""
    text = _optional_text(_join(folder, "chat_template.jinja"))
    if text is not None:
        return text
    template = config.get("chat_template")
    if template is None:
        processor = _optional_text(_join(folder, "chat_template.json"))
        template = json.loads(processor).get("chat_template") if processor else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _huggingface(tokenizer_json_path: str) -> HuggingFaceTokenizer:
    folder = _dirname(tokenizer_json_path)
    config_text = _optional_text(_join(folder, "tokenizer_config.json"))
    config = json.loads(config_text) if config_text else {}
    files = HuggingFaceFiles(read_bytes(tokenizer_json_path).decode("utf-8"), config, _template(folder, config))
    return HuggingFaceTokenizer(files)


def load_tokenizer(path: str) -> Tokenizer | None:
    """The tokenizer at `path` (None when no path is given). Raises ValueError or ItemError('read')."""
    if not path:
        return None
    if path.endswith(".json"):
        return _huggingface(path)
    if path.endswith(".model") or not (exists(_join(path, "tokenizer.json")) or exists(_join(path, "tokenizer.model"))):
        return SentencePieceTokenizer(read_bytes(path))
    if exists(_join(path, "tokenizer.json")):
        return _huggingface(_join(path, "tokenizer.json"))
    config_text = _optional_text(_join(path, "tokenizer_config.json"))
    config = json.loads(config_text) if config_text else {}
    return SentencePieceTokenizer(read_bytes(_join(path, "tokenizer.model")), _template(path, config))
