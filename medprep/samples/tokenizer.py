"""Train a small SentencePiece model with the structure of Gemma 3's tokenizer, for the demo and the tests.

The real Gemma 3 tokenizer cannot be shipped. This model copies what the chat sequence depends on:
control pieces <pad> <eos> <bos> <unk>; user-defined pieces <mask>, [multimodal], <start_of_turn>,
<end_of_turn>, <start_of_image>, <end_of_image>; newline runs ("\\n" … 31 × "\\n"), space runs and tab
runs as single user-defined pieces (so newline runs merge where two meet, as in Gemma 3); BPE with byte
fallback, no dummy prefix, no whitespace normalization, digits split. Like Gemma 3's file it has NO
<image_soft_token> piece: that token is added after the vocabulary, as Hugging Face adds it.
"""

from __future__ import annotations

import io
import itertools

import sentencepiece as spm

GEMMA3_USER_PIECES = (
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
)
WHITESPACE_RUNS = (
    tuple("\n" * k for k in range(1, 32)) + tuple("▁" * k for k in range(2, 32)) + tuple("\t" * k for k in range(1, 32))
)

_FINDINGS = [
    "no focal consolidation",
    "a small left pleural effusion",
    "mild cardiomegaly",
    "a rounded opacity in the right upper lobe",
    "clear lungs",
    "no pneumothorax",
    "degenerative changes of the thoracic spine",
    "healthy optic disc and macula",
    "scattered microaneurysms",
    "a uniformly brown macule",
    "an irregular pigmented lesion",
    "hypodense lesion in the liver",
    "no intracranial haemorrhage",
    "bowel loops are unremarkable",
    "tumour cells infiltrating the stroma",
    "lymph node with reactive follicles",
]
_TEMPLATES = [
    "Findings: {a}. Impression: {b}.",
    "There is {a} and {b}.",
    "Compared with the prior, {a}; {b}.",
    "Image {n} shows {a}.",
    "Slice {n}: {a}.",
    "Impression: {a}. No {b}.",
    "user\nDescribe this image.\nmodel\n{a}.",
    "SLICE {n}",
]


def sample_corpus() -> list[str]:
    """Deterministic report-like sentences for training the demo tokenizer."""
    lines = []
    for i, (t, a, b) in enumerate(itertools.product(_TEMPLATES, _FINDINGS, _FINDINGS[::-1])):
        lines.append(t.format(a=a, b=b, n=i % 120 + 1))
    return lines


def train_demo_tokenizer(vocab_size: int = 640) -> bytes:
    """Train and return a serialized SentencePiece model (deterministic, single thread)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(GEMMA3_USER_PIECES + WHITESPACE_RUNS),
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()
