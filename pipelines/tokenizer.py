"""Load the SentencePiece model named by --tokenizer (local or gs://)."""
from __future__ import annotations

from pipelines.sources.files import read_bytes
from transforms.text import Tokenizer


def load_tokenizer(path: str) -> Tokenizer | None:
    """The tokenizer at `path`, or None when no path is given."""
    return Tokenizer(read_bytes(path)) if path else None
