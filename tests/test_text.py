import pickle

import pytest

from transforms.chat import IMAGE_TOKENS_PER_IMAGE, conversation, images_then_prompt
from transforms.text import SentencePieceTokenizer, SpecialSplitter


def test_demo_model_has_gemma3_structure(demo_model_bytes):
    tok = SentencePieceTokenizer(demo_model_bytes)
    assert tok.can_chat and tok.missing_for_chat() == []
    ids = tok.describe()["special_ids"]
    assert ids == {"bos": 2, "start_of_turn": 6, "end_of_turn": 7, "start_of_image": 8, "end_of_image": 9,
                   "image_soft_token": 640}


def test_plain_model_cannot_chat(plain_model_bytes):
    tok = SentencePieceTokenizer(plain_model_bytes)
    assert not tok.can_chat
    assert tok.missing_for_chat() == ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
    with pytest.raises(ValueError, match="cannot build the chat sequence"):
        tok.chat(conversation(images_then_prompt(1), "x"))


def test_encode_truncates_and_reports(demo_model_bytes):
    tok = SentencePieceTokenizer(demo_model_bytes)
    ids, truncated = tok.encode("There is mild cardiomegaly and clear lungs.")
    assert not truncated and tok.decode(ids) == "There is mild cardiomegaly and clear lungs."
    short, truncated = tok.encode("There is mild cardiomegaly and clear lungs.", 3)
    assert truncated and short == ids[:3]
    text, cut_ids, truncated = tok.truncate("There is mild cardiomegaly and clear lungs.", 3)
    assert truncated and cut_ids == ids[:3] and text == tok.decode(ids[:3])


def test_truncate_non_ascii_cuts_at_a_character(demo_model_bytes):
    tok = SentencePieceTokenizer(demo_model_bytes)
    text = "肺结节 Ωμέγα"
    ids, starts = tok.encode_offsets(text)
    assert starts == sorted(starts) and starts[0] == 0 and all(0 <= s < len(text) for s in starts)
    for n in range(1, len(ids)):
        prefix, _, truncated = tok.truncate(text, n)
        assert truncated and text.startswith(prefix) and len(tok.encode(prefix)[0]) <= n


def test_chat_sequence_layout_and_mask(demo_model_bytes):
    tok = SentencePieceTokenizer(demo_model_bytes)
    chat = tok.chat(conversation(images_then_prompt(2, "Describe."), "Clear lungs."))
    ids, mask = chat.input_ids, chat.loss_mask
    soi, eoi, soft, sot, eot = 8, 9, 640, 6, 7
    assert ids[:2] == [2, sot]
    assert ids.count(soi) == 2 and ids.count(eoi) == 2 and ids.count(soft) == 2 * IMAGE_TOKENS_PER_IMAGE
    first = ids.index(soi)
    assert ids[first + 1:first + 1 + IMAGE_TOKENS_PER_IMAGE] == [soft] * IMAGE_TOKENS_PER_IMAGE
    resp, _ = tok.encode("Clear lungs.")
    assert [i for i, m in zip(ids, mask) if m] == resp + [eot]
    assert tok.decode(ids[-len(resp) - 2:-2]) == "Clear lungs." and tok.decode(ids[-2:]) == "<end_of_turn>\n"


def test_special_splitter_is_leftmost_longest():
    s = SpecialSplitter(["<bos>", "<b>", "\n", "\n\n", "\n\n\n"])
    text = "x<bos>y\n\n\n\nz<b"
    assert [(text[a:b], sp) for a, b, sp in s.split(text)] == [
        ("x", False), ("<bos>", True), ("y", False), ("\n\n\n", True), ("\n", True), ("z<b", False)]


def test_tokenizer_pickles(demo_model_bytes):
    tok = pickle.loads(pickle.dumps(SentencePieceTokenizer(demo_model_bytes, template="{{ bos_token }}")))
    assert tok.can_chat and tok.template == "{{ bos_token }}" and tok.encode("lungs")[0]


def test_not_a_model():
    with pytest.raises(ValueError, match="SentencePiece"):
        SentencePieceTokenizer(b"definitely not a model")
