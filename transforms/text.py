"""SentencePiece tokenization of prompt/response text and the Gemma 3 chat id sequence.

Ids are SentencePiece ids (int). A tokenizer that has Gemma 3's special pieces
(<start_of_image>, <end_of_image>, <image_soft_token>, <start_of_turn>, <end_of_turn>)
also yields the chat sequence; the special ids are looked up in the model, never assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import sentencepiece as spm

IMAGE_TOKENS_PER_IMAGE = 256
GEMMA3_PIECES = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>")


class ImagePart:
    """Marks an image's place in a chat turn."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ImagePart()"


IMAGE = ImagePart()
Part = Union[str, ImagePart, Sequence[int]]  # text, an image, or pre-tokenized ids


@dataclass(frozen=True)
class ChatIds:
    """The chat-formatted ids and a loss mask (1 on the response and its closing turn marker)."""

    input_ids: list[int]
    loss_mask: list[int]


class Tokenizer:
    """A SentencePiece model; serializable (pickles as its model bytes)."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as exc:
            raise ValueError(f"not a SentencePiece model: {exc}") from None
        unk = self._sp.unk_id()
        ids = {piece: self._sp.piece_to_id(piece) for piece in GEMMA3_PIECES}
        self.is_gemma3 = all(i != unk for i in ids.values()) and self._sp.bos_id() >= 0
        self._special = ids

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """Load a local .model file."""
        with open(path, "rb") as fh:
            return cls(fh.read())

    def __reduce__(self):
        return (Tokenizer, (self._proto,))

    @property
    def model_proto(self) -> bytes:
        """The serialized model."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        """Number of pieces."""
        return self._sp.get_piece_size()

    def special_id(self, piece: str) -> int:
        """Id of a Gemma 3 special piece (only when is_gemma3)."""
        return self._special[piece]

    def encode(self, text: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
        """Text -> (ids without BOS/EOS, truncated?) keeping at most max_tokens ids."""
        ids = self._sp.encode(text or "", out_type=int)
        if max_tokens is not None and len(ids) > max_tokens:
            return ids[:max_tokens], True
        return ids, False

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text."""
        return self._sp.decode(list(ids))

    def _image_ids(self) -> list[int]:
        nl2 = self._sp.encode("\n\n", out_type=int)
        soft = self._special["<image_soft_token>"]
        return nl2 + [self._special["<start_of_image>"]] + [soft] * IMAGE_TOKENS_PER_IMAGE + [
            self._special["<end_of_image>"]] + nl2

    def chat_ids(self, user_parts: Sequence[Part], response_ids: Sequence[int]) -> ChatIds:
        """Gemma 3 turn layout: <bos><start_of_turn>user\\n{parts}<end_of_turn>\\n<start_of_turn>model\\n{response}<end_of_turn>\\n."""
        if not self.is_gemma3:
            raise ValueError("this tokenizer has no Gemma 3 special pieces")
        sot, eot = self._special["<start_of_turn>"], self._special["<end_of_turn>"]
        enc = lambda s: self._sp.encode(s, out_type=int)  # noqa: E731
        prompt: list[int] = [self._sp.bos_id(), sot] + enc("user\n")
        image_ids = None
        for part in user_parts:
            if isinstance(part, ImagePart):
                image_ids = image_ids or self._image_ids()
                prompt += image_ids
            elif isinstance(part, str):
                prompt += enc(part) if part else []
            else:
                prompt += [int(i) for i in part]
        prompt += [eot] + enc("\n") + [sot] + enc("model\n")
        response = list(response_ids) + [eot]
        tail = enc("\n")
        ids = prompt + response + tail
        mask = [0] * len(prompt) + [1] * len(response) + [0] * len(tail)
        return ChatIds(ids, mask)
