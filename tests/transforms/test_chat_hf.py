"""medprep's chat sequence against Hugging Face's Gemma3Processor, token for token.

The reference is transformers itself (tests/hf_reference.py) over the demo tokenizer, which has Gemma 3's
structure: control and user-defined pieces, newline runs as pieces, no <image_soft_token> piece.
"""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

from hf_reference import GEMMA3_TEMPLATE, hf_processor
from medprep.transforms.chat import (
    conversation,
    images_then_prompt,
    prompt_then_images,
    render_gemma3,
    render_jinja,
    with_images,
)
from medprep.transforms.localization import box_answer
from medprep.transforms.text import HuggingFaceFiles, HuggingFaceTokenizer, SentencePieceTokenizer

SYSTEM = "You are an expert radiologist."
TEXTS = {
    "plain": "Findings: mild cardiomegaly. Impression: no pneumothorax.",
    "newlines": "\n\nFindings:\n\n\nclear lungs.\n",
    "crlf": "Findings: clear lungs.\r\nImpression: normal.\r\n",
    "tabs_spaces": "\tSize:  3.2 cm\t\tlesion   in  segment 4.  ",
    "non_latin": "Ωμέγα: 肺结节 3 мм; تصوير الصدر طبيعي.",
    "empty_after_trim": "  \n ",
}


def _cases():
    """(name, messages): every task's content layout, with and without prompt and system message."""
    cases = [
        ("image_text", conversation(images_then_prompt(1, "Describe this X-ray."), TEXTS["plain"])),
        ("image_text_no_prompt", conversation(images_then_prompt(1, ""), TEXTS["plain"])),
        ("longitudinal", conversation(images_then_prompt(2, "Compare with the prior."), TEXTS["plain"])),
        (
            "localization",
            conversation(images_then_prompt(1, "Where is the nodule?"), box_answer([[0.1, 0.2, 0.3, 0.4]], ["nodule"])),
        ),
        ("classification", conversation(images_then_prompt(1, "Normal or abnormal?"), "abnormal")),
        (
            "ct_series",
            conversation(
                prompt_then_images("Write the findings.", 4, [f"SLICE {n}" for n in range(1, 5)]), TEXTS["plain"]
            ),
        ),
        ("slide", conversation(prompt_then_images("Describe the tissue.", 3), "tumour cells infiltrating the stroma")),
        ("system", conversation(images_then_prompt(1, "Describe."), TEXTS["plain"], SYSTEM)),
        ("system_series", conversation(prompt_then_images("", 2, ["SLICE 1", "SLICE 2"]), "clear", SYSTEM + "\n")),
    ]
    for name, text in TEXTS.items():
        cases.append((f"text_{name}", conversation(images_then_prompt(2, text), text)))
        cases.append((f"prompt_first_{name}", conversation(prompt_then_images(text, 1), text, SYSTEM)))
    return cases


CASES = _cases()
IMAGE = Image.fromarray(np.full((896, 896, 3), 100, np.uint8))


@pytest.fixture(scope="module")
def processor(demo_model_path, tmp_path_factory):
    return hf_processor(demo_model_path, str(tmp_path_factory.mktemp("hf_tok")))


@pytest.fixture(scope="module")
def medprep_tokenizers(demo_model_bytes, processor, tmp_path_factory):
    """The same tokenizer as medprep loads it from a .model and from the folder Hugging Face saves."""
    folder = tmp_path_factory.mktemp("hf_saved")
    processor.tokenizer.save_pretrained(str(folder))
    (folder / "chat_template.jinja").write_text(GEMMA3_TEMPLATE)
    from medprep.pipelines.io.tokenizer import load_tokenizer

    return {"model": SentencePieceTokenizer(demo_model_bytes), "folder": load_tokenizer(str(folder))}


def _hf_ids(processor, messages, **kw):
    n = sum(item["type"] == "image" for m in messages for item in m["content"])
    out = processor.apply_chat_template(with_images(messages, [IMAGE] * n), tokenize=True, return_dict=True, **kw)
    return list(np.asarray(out["input_ids"]).reshape(-1))


@pytest.mark.parametrize("name,messages", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("source", ["model", "folder"])
def test_input_ids_equal_hugging_face(name, messages, source, processor, medprep_tokenizers):
    tok = medprep_tokenizers[source]
    assert tok.kind == ("sentencepiece" if source == "model" else "huggingface")
    chat = tok.chat(messages)
    expected = _hf_ids(processor, messages)
    assert chat.input_ids == expected
    # serving: the messages without the response, with the generation prompt, are exactly the prompt part
    prompt = _hf_ids(processor, messages[:-1], add_generation_prompt=True)
    assert chat.prompt_length == len(prompt) and chat.input_ids[: len(prompt)] == prompt
    # loss mask: the response and its <end_of_turn>, nothing else (the trailing "\n" is not trained on)
    eot = processor.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    close = expected.index(eot, len(prompt))
    assert chat.loss_mask == [0] * len(prompt) + [1] * (close + 1 - len(prompt)) + [0] * (len(expected) - close - 1)


def test_newline_runs_merge_across_the_joins(processor, medprep_tokenizers):
    """The failure the issue measured: after 'user\\n' an image gives one '\\n\\n\\n' piece, not '\\n' + '\\n\\n'."""
    tok = medprep_tokenizers["model"]
    ids = tok.chat(conversation(images_then_prompt(2, ""), "x")).input_ids
    pieces = processor.tokenizer.convert_ids_to_tokens(ids)
    boi = pieces.index("<start_of_image>")
    assert pieces[:boi] == ["<bos>", "<start_of_turn>", "user", "\n\n\n"]
    second = pieces.index("<start_of_image>", boi + 1)
    assert pieces[second - 2 : second] == ["<end_of_image>", "\n\n\n\n"]


def test_soft_token_is_added_after_the_vocabulary(demo_model_bytes, processor):
    tok = SentencePieceTokenizer(demo_model_bytes)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=demo_model_bytes)
    assert sp.piece_to_id("<image_soft_token>") == sp.unk_id()  # like Gemma 3's file: no such piece
    assert tok.token_id("<image_soft_token>") == sp.get_piece_size() == 640
    assert processor.tokenizer.convert_tokens_to_ids("<image_soft_token>") == 640
    assert tok.vocab_size == len(processor.tokenizer) == 641


@pytest.mark.parametrize("name,messages", CASES, ids=[c[0] for c in CASES])
def test_python_template_equals_gemma3_jinja(name, messages):
    tokens = {"bos_token": "<bos>"}
    for agp in (False, True):
        msgs = messages if not agp else messages[:-1]
        assert render_gemma3(msgs, agp) == render_jinja(GEMMA3_TEMPLATE, msgs, agp, tokens)


def test_roles_must_alternate():
    bad = [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
    with pytest.raises(ValueError, match="alternate"):
        render_gemma3(bad)
    with pytest.raises(ValueError, match="alternate"):
        render_jinja(GEMMA3_TEMPLATE, bad, False, {"bos_token": "<bos>"})


def test_tokenizer_json_without_soft_token_gets_it_added(processor, tmp_path):
    """A tokenizer.json whose added tokens lack <image_soft_token> gets it at the end, like the .model path."""
    folder = tmp_path / "t"
    processor.tokenizer.save_pretrained(str(folder))
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image_soft_token>"]
    tok = HuggingFaceTokenizer(HuggingFaceFiles(json.dumps(data), {}, None))
    assert tok.token_id("<image_soft_token>") == 640 and tok.can_chat and tok.template is None
