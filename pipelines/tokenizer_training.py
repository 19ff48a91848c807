"""Train the small demo SentencePiece model on sample report text, with Gemma 3's special pieces.

The real Gemma 3 tokenizer cannot be shipped; this model has the same special pieces
(<start_of_image>, <image_soft_token>, …) so the chat-sequence path runs end to end.
"""
from __future__ import annotations

import io
import itertools

import sentencepiece as spm

from transforms.text import GEMMA3_PIECES

_FINDINGS = ["no focal consolidation", "a small left pleural effusion", "mild cardiomegaly",
             "a rounded opacity in the right upper lobe", "clear lungs", "no pneumothorax",
             "degenerative changes of the thoracic spine", "healthy optic disc and macula",
             "scattered microaneurysms", "a uniformly brown macule", "an irregular pigmented lesion",
             "hypodense lesion in the liver", "no intracranial haemorrhage", "bowel loops are unremarkable",
             "tumour cells infiltrating the stroma", "lymph node with reactive follicles"]
_TEMPLATES = ["Findings: {a}. Impression: {b}.", "There is {a} and {b}.", "Compared with the prior, {a}; {b}.",
              "Image {n} shows {a}.", "Slice {n}: {a}.", "Impression: {a}. No {b}."]


def sample_corpus() -> list[str]:
    """Deterministic report-like sentences for training the demo tokenizer."""
    lines = []
    for i, (t, a, b) in enumerate(itertools.product(_TEMPLATES, _FINDINGS, _FINDINGS[::-1])):
        lines.append(t.format(a=a, b=b, n=i % 120 + 1))
    return lines


def train_demo_tokenizer(vocab_size: int = 512) -> bytes:
    """Train and return a serialized SentencePiece model (deterministic, single thread)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_corpus()), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, split_digits=True,
        user_defined_symbols=list(GEMMA3_PIECES) + ["\n", "\n\n"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", num_threads=1, minloglevel=2)
    return model.getvalue()
