"""Tokenizers for records and the chat id sequence, token for token what Hugging Face's Gemma 3 stack builds.

Two sources give one interface: a SentencePiece `.model` (Gemma 3's own file has no
`<image_soft_token>` piece: it is added at id = vocabulary size, as Hugging Face adds it) and a
Hugging Face `tokenizer.json` (read by the `tokenizers` library that transformers itself runs).
Text is split at special tokens (leftmost-longest, as Hugging Face matches added tokens) and each
stretch between them is encoded as one piece of text; the chat sequence is the whole rendered
conversation, images expanded, tokenized at once — never part by part.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from medprep.transforms.chat import IMAGE_TOKENS_PER_IMAGE, Message, expand_images, render_gemma3, render_jinja


@dataclass(frozen=True)
class ChatTokens:
    """The special-token strings the chat sequence needs (Gemma 3's names by default)."""

    bos: str = "<bos>"
    start_of_turn: str = "<start_of_turn>"
    end_of_turn: str = "<end_of_turn>"
    boi: str = "<start_of_image>"
    eoi: str = "<end_of_image>"
    image: str = "<image_soft_token>"

    def required(self) -> tuple[str, ...]:
        """Tokens that must be in the vocabulary (the image token may be added)."""
        return (self.bos, self.start_of_turn, self.end_of_turn, self.boi, self.eoi)


@dataclass(frozen=True)
class ChatIds:
    """The chat-formatted ids and a loss mask (1 on the response and its closing turn marker)."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_length: int = 0  # ids before the response: what serving feeds the model


def _trie_pattern(words: Sequence[str]) -> str:
    """A regex matching any of `words`, longest first at a position (a trie, so cost does not grow with the count)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        if len(alts) == 1 and "" not in node:
            return alts[0]
        group = f"(?:{'|'.join(alts)})"
        return group + "?" if "" in node else group

    return emit(trie)


class SpecialSplitter:
    """Splits text at special-token strings, leftmost-longest, into (start, end, is_special) spans."""

    def __init__(self, tokens: Sequence[str]):
        words = sorted({t for t in tokens if t})
        self._re = re.compile(_trie_pattern(words)) if words else None

    def split(self, text: str) -> list[tuple[int, int, bool]]:
        """Spans covering text in order; special spans are whole tokens."""
        spans: list[tuple[int, int, bool]] = []
        pos = 0
        if self._re is not None:
            for m in self._re.finditer(text):
                if m.start() > pos:
                    spans.append((pos, m.start(), False))
                spans.append((m.start(), m.end(), True))
                pos = m.end()
        if pos < len(text):
            spans.append((pos, len(text), False))
        return spans


class Tokenizer:
    """Common logic: plain encoding with truncation, the chat sequence and its loss mask, a description."""

    kind = ""
    tokens = ChatTokens()
    template: str | None = None  # a Jinja chat template; None: Gemma 3's (medprep.transforms.chat.render_gemma3)

    # -- implemented by each source --------------------------------------------------------------
    def token_id(self, token: str) -> int | None:
        """Id of a single-token string (piece or added token), else None."""
        raise NotImplementedError

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Text -> (ids, character offset where each id's text starts), special tokens recognized, no BOS added."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text (special tokens written out)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything that defines this tokenizer (files' bytes and template)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def encode(self, text: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
        """Text -> (ids without BOS/EOS, truncated?) keeping at most max_tokens ids."""
        ids, _ = self.encode_offsets(text or "")
        if max_tokens is not None and len(ids) > max_tokens:
            return ids[:max_tokens], True
        return ids, False

    def truncate(self, text: str, max_tokens: int) -> tuple[str, list[int], bool]:
        """Text -> (the prefix of text that its first max_tokens ids cover, those ids, truncated?)."""
        ids, starts = self.encode_offsets(text or "")
        if len(ids) <= max_tokens:
            return text, ids, False
        cut = starts[max_tokens]
        return text[:cut], ids[:max_tokens], True

    def missing_for_chat(self) -> list[str]:
        """Special tokens the chat sequence needs that this vocabulary lacks (empty: chat ids can be built)."""
        return [t for t in self.tokens.required() if self.token_id(t) is None]

    @property
    def can_chat(self) -> bool:
        """Whether input_ids / loss_mask can be built."""
        return not self.missing_for_chat()

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the chat template writes it (one <start_of_image> per image)."""
        if self.template is None:
            return render_gemma3(messages, add_generation_prompt, bos=self.tokens.bos, image_marker=self.tokens.boi)
        variables = {
            "bos_token": self.tokens.bos,
            "eos_token": self._eos(),
            "boi_token": self.tokens.boi,
            "eoi_token": self.tokens.eoi,
            "image_token": self.tokens.image,
        }
        return render_jinja(self.template, messages, add_generation_prompt, variables)

    def _eos(self) -> str:
        return "<eos>"

    def expand(self, text: str) -> str:
        """Each image marker expanded to its 256 soft tokens, as Gemma3Processor does."""
        t = self.tokens
        return expand_images(text, t.boi, t.image, t.eoi, IMAGE_TOKENS_PER_IMAGE)

    def chat(self, messages: list[Message]) -> ChatIds:
        """The conversation (last message: the model's response) -> input_ids and loss_mask.

        input_ids = the rendered, image-expanded conversation tokenized at once (BOS added only if the
        template did not write it), which is processor.apply_chat_template(messages, tokenize=True).
        loss_mask = 1 on the ids that start inside the response: from the end of the prompt part (the
        conversation without the response, rendered with the generation prompt) through the response's
        closing <end_of_turn>.
        """
        if not self.can_chat:
            raise ValueError(f"this tokenizer cannot build the chat sequence: missing {self.missing_for_chat()}")
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the conversation must end with the model's response")
        full = self.expand(self.render(messages))
        prompt = self.expand(self.render(messages[:-1], add_generation_prompt=True))
        if not full.startswith(prompt):
            raise ValueError("chat template: the conversation does not begin with its own generation prompt")
        start = len(prompt)
        close = full.find(self.tokens.end_of_turn, start)
        end = close + len(self.tokens.end_of_turn) if close >= 0 else len(full)
        ids, starts = self.encode_offsets(full)
        if not full.startswith(self.tokens.bos):
            ids, starts = [cast(int, self.token_id(self.tokens.bos))] + ids, [-1] + starts  # can_chat: it has an id
        mask = [1 if start <= s < end else 0 for s in starts]
        prompt_length = next((i for i, s in enumerate(starts) if s >= start), len(ids))
        return ChatIds(ids, mask, prompt_length)

    def describe(self) -> dict[str, Any]:
        """What summary.json records: kind, vocabulary size, the special ids used, the template's hash."""
        t = self.tokens
        names = {
            "bos": t.bos,
            "start_of_turn": t.start_of_turn,
            "end_of_turn": t.end_of_turn,
            "start_of_image": t.boi,
            "end_of_image": t.eoi,
            "image_soft_token": t.image,
        }
        template = self.template if self.template is not None else "builtin:gemma3"
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "chat": self.can_chat,
            "special_ids": {k: self.token_id(v) for k, v in names.items()},
            "chat_template": "builtin:gemma3" if self.template is None else "tokenizer",
            "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
            "image_tokens_per_image": IMAGE_TOKENS_PER_IMAGE,
            "sha256": self.fingerprint,
        }


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; the image token is added at id = piece count when it is not a piece.
    Pickles as its bytes."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, template: str | None = None, tokens: ChatTokens = ChatTokens()):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as exc:
            raise ValueError(f"not a SentencePiece model: {exc}") from None
        self.template, self.tokens = template, tokens
        size = self._sp.get_piece_size()
        self._added = {} if self._piece(tokens.image) is not None else {tokens.image: size}
        # SentencePiece never reads control or unknown pieces from text (Hugging Face does): split at them.
        specials = {self._sp.id_to_piece(i): i for i in range(size) if self._sp.is_control(i) or self._sp.is_unknown(i)}
        self._special = {**specials, **self._added}
        self._names = {i: p for p, i in self._special.items()}
        self._splitter = SpecialSplitter(list(self._special))

    @classmethod
    def from_file(cls, path: str) -> SentencePieceTokenizer:
        """Load a local .model file."""
        with open(path, "rb") as fh:
            return cls(fh.read())

    def __reduce__(self) -> tuple[type[SentencePieceTokenizer], tuple[bytes, str | None, ChatTokens]]:
        return (SentencePieceTokenizer, (self._proto, self.template, self.tokens))

    @property
    def model_proto(self) -> bytes:
        """The serialized model."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size() + len(self._added)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._proto + (self.template or "").encode("utf-8")).hexdigest()

    def _piece(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

    def token_id(self, token: str) -> int | None:
        return self._added[token] if token in self._added else self._piece(token)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        starts: list[int] = []
        for a, b, special in self._splitter.split(text):
            if special:
                ids.append(self._special[text[a:b]])
                starts.append(a)
                continue
            chunk = text[a:b]
            pieces = self._sp.encode(chunk, return_type="proto").pieces
            if chunk.isascii():
                chars = None
            else:  # byte offset -> character offset
                chars = [0] * (len(chunk.encode("utf-8")) + 1)
                pos = 0
                for k, ch in enumerate(chunk):
                    n = len(ch.encode("utf-8"))
                    chars[pos : pos + n] = [k] * n
                    pos += n
                chars[pos] = len(chunk)
            for p in pieces:
                ids.append(p.id)
                starts.append(a + (p.begin if chars is None else chars[p.begin]))
        return ids, starts

    def decode(self, ids: Sequence[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._names:
                out.append(self._sp.decode(run))
                out.append(self._names[i])
                run = []
            else:
                run.append(int(i))
        out.append(self._sp.decode(run))
        return "".join(out)


@dataclass
class HuggingFaceFiles:
    """A Hugging Face tokenizer as files: tokenizer.json, tokenizer_config.json (parsed) and a chat template."""

    tokenizer_json: str
    config: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None


def _token_name(value: object) -> str | None:
    if isinstance(value, dict):
        content: str | None = value.get("content")
        return content
    return value if isinstance(value, str) else None


def tokens_from_config(config: dict[str, Any]) -> ChatTokens:
    """Special-token names from a tokenizer_config.json (top level or extra_special_tokens), Gemma 3's otherwise."""
    extra = config.get("extra_special_tokens")
    extra = extra if isinstance(extra, dict) else {}
    d = ChatTokens()

    def pick(key: str, default: str) -> str:
        return _token_name(config.get(key)) or _token_name(extra.get(key)) or default

    return ChatTokens(
        bos=pick("bos_token", d.bos),
        start_of_turn=d.start_of_turn,
        end_of_turn=d.end_of_turn,
        boi=pick("boi_token", d.boi),
        eoi=pick("eoi_token", d.eoi),
        image=pick("image_token", d.image),
    )


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face tokenizer.json run by the `tokenizers` library, with its folder's chat template if any."""

    kind = "huggingface"

    def __init__(self, files: HuggingFaceFiles):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        self._files = files
        try:
            self._tok = Backend.from_str(files.tokenizer_json)
        except Exception as exc:
            raise ValueError(f"not a Hugging Face tokenizer.json: {exc}") from None
        self.tokens = tokens_from_config(files.config)
        self.template = files.chat_template
        if self._tok.token_to_id(self.tokens.image) is None and self._tok.token_to_id(self.tokens.boi) is not None:
            self._tok.add_special_tokens([AddedToken(self.tokens.image, special=True, normalized=False)])

    def __reduce__(self) -> tuple[type[HuggingFaceTokenizer], tuple[HuggingFaceFiles]]:
        return (HuggingFaceTokenizer, (self._files,))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        blob = json.dumps([self._files.tokenizer_json, self._files.config, self._files.chat_template], sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _eos(self) -> str:
        return _token_name(self._files.config.get("eos_token")) or "<eos>"

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [a for a, _ in enc.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)
