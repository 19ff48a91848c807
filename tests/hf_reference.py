"""Hugging Face's own Gemma 3 stack over a test tokenizer: the independent reference for medprep's chat ids.

GemmaTokenizer is converted from the SentencePiece file by transformers itself; Gemma3Processor expands
images and tokenizes; the chat template is Gemma 3's as its checkpoints ship it (tests/data; transformers
5 does not bundle it). Nothing is downloaded.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
GEMMA3_TEMPLATE = open(os.path.join(HERE, "data", "gemma3_chat_template.jinja"), encoding="utf-8").read()
CHAT_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}


def _use_transformers_protobuf_module():
    """transformers converts a .model through sentencepiece's protobuf module, generated for protobuf >= 7,
    which Beam's pin (< 7) forbids; transformers ships its own module for the same format: use that."""
    import transformers.convert_slow_tokenizer as convert
    from transformers.utils import sentencepiece_model_pb2_new

    convert.import_protobuf = lambda *args, **kwargs: sentencepiece_model_pb2_new


def hf_tokenizer(model_path: str, folder: str):
    """transformers' GemmaTokenizer for a SentencePiece .model, with <image_soft_token> added as HF adds it."""
    import shutil

    from tokenizers import AddedToken
    from transformers import GemmaTokenizer

    _use_transformers_protobuf_module()
    os.makedirs(folder, exist_ok=True)
    shutil.copy(model_path, os.path.join(folder, "tokenizer.model"))
    tok = GemmaTokenizer.from_pretrained(folder, extra_special_tokens=CHAT_TOKENS)
    tok.add_tokens([AddedToken("<image_soft_token>", special=True, normalized=False)], special_tokens=True)
    return tok


def hf_processor(model_path: str, folder: str):
    """Gemma3Processor (896 × 896 images, 256 soft tokens per image) over hf_tokenizer, Gemma 3's template."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image_processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})  # no torchvision here
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=hf_tokenizer(model_path, folder),
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=256,
    )
