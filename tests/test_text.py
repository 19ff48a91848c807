import pytest

from transforms.text import IMAGE, IMAGE_TOKENS_PER_IMAGE, Tokenizer


def test_demo_model_is_detected_as_gemma3(demo_model_bytes):
    tok = Tokenizer(demo_model_bytes)
    assert tok.is_gemma3
    ids = {p: tok.special_id(p) for p in ("<start_of_image>", "<end_of_image>", "<image_soft_token>")}
    assert len(set(ids.values())) == 3


def test_plain_model_is_not_gemma3(plain_model_bytes):
    tok = Tokenizer(plain_model_bytes)
    assert not tok.is_gemma3
    with pytest.raises(ValueError):
        tok.chat_ids([IMAGE], [1])


def test_encode_truncates_and_reports(demo_model_bytes):
    tok = Tokenizer(demo_model_bytes)
    ids, truncated = tok.encode("There is mild cardiomegaly and clear lungs.")
    assert not truncated and tok.decode(ids) == "There is mild cardiomegaly and clear lungs."
    short, truncated = tok.encode("There is mild cardiomegaly and clear lungs.", 3)
    assert truncated and short == ids[:3]


def test_chat_sequence_layout_and_mask(demo_model_bytes):
    tok = Tokenizer(demo_model_bytes)
    resp, _ = tok.encode("Clear lungs.")
    prompt, _ = tok.encode("Describe.")
    chat = tok.chat_ids([IMAGE, IMAGE, prompt], resp)
    ids, mask = chat.input_ids, chat.loss_mask
    soi, eoi, soft = (tok.special_id(p) for p in ("<start_of_image>", "<end_of_image>", "<image_soft_token>"))
    sot, eot = tok.special_id("<start_of_turn>"), tok.special_id("<end_of_turn>")
    assert ids[0] == tok._sp.bos_id() and ids[1] == sot
    assert ids.count(soi) == 2 and ids.count(eoi) == 2 and ids.count(soft) == 2 * IMAGE_TOKENS_PER_IMAGE
    first = ids.index(soi)
    assert ids[first + 1:first + 1 + IMAGE_TOKENS_PER_IMAGE] == [soft] * IMAGE_TOKENS_PER_IMAGE
    assert ids[first + 1 + IMAGE_TOKENS_PER_IMAGE] == eoi
    nl2 = tok._sp.encode("\n\n", out_type=int)
    assert ids[first - len(nl2):first] == nl2
    # the loss covers exactly the response and its closing <end_of_turn>
    assert [i for i, m in zip(ids, mask) if m] == resp + [eot]
    assert len(ids) == len(mask) and tok.decode(ids[-len(resp) - 2:-2]) == "Clear lungs."


def test_tokenizer_pickles(demo_model_bytes):
    import pickle

    tok = pickle.loads(pickle.dumps(Tokenizer(demo_model_bytes)))
    assert tok.is_gemma3 and tok.encode("lungs")[0]


def test_not_a_model():
    with pytest.raises(ValueError, match="SentencePiece"):
        Tokenizer(b"definitely not a model")
