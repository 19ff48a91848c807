import pickle

import pytest

from medprep.transforms.chat import IMAGE_TOKENS_PER_IMAGE, conversation, images_then_prompt
from medprep.transforms.text import SentencePieceTokenizer, SpecialSplitter


def test_demo_model_has_gemma3_structure(demo_model_bytes):
    tok = SentencePieceTokenizer(demo_model_bytes)
    assert tok.can_chat and tok.missing_for_chat() == []
    ids = tok.describe()["special_ids"]
    assert ids == {
        "bos": 2,
        "start_of_turn": 6,
        "end_of_turn": 7,
        "start_of_image": 8,
        "end_of_image": 9,
        "image_soft_token": 640,
    }


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
    assert ids[first + 1 : first + 1 + IMAGE_TOKENS_PER_IMAGE] == [soft] * IMAGE_TOKENS_PER_IMAGE
    resp, _ = tok.encode("Clear lungs.")
    assert [i for i, m in zip(ids, mask) if m] == resp + [eot]
    assert tok.decode(ids[-len(resp) - 2 : -2]) == "Clear lungs." and tok.decode(ids[-2:]) == "<end_of_turn>\n"


def test_special_splitter_is_leftmost_longest():
    s = SpecialSplitter(["<bos>", "<b>", "\n", "\n\n", "\n\n\n"])
    text = "x<bos>y\n\n\n\nz<b"
    assert [(text[a:b], sp) for a, b, sp in s.split(text)] == [
        ("x", False),
        ("<bos>", True),
        ("y", False),
        ("\n\n\n", True),
        ("\n", True),
        ("z<b", False),
    ]


def test_tokenizer_pickles(demo_model_bytes):
    tok = pickle.loads(pickle.dumps(SentencePieceTokenizer(demo_model_bytes, template="{{ bos_token }}")))
    assert tok.can_chat and tok.template == "{{ bos_token }}" and tok.encode("lungs")[0]


def test_not_a_model():
    with pytest.raises(ValueError, match="SentencePiece"):
        SentencePieceTokenizer(b"definitely not a model")


def _png_manifest(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": "t", "prompt": "p"}) + "\n")
    return str(tmp_path / "m.jsonl")


def test_tokenizer_without_chat_tokens_is_refused_at_startup(tmp_path, plain_model_bytes, capsys):
    from medprep.pipelines.cli.main import main

    (tmp_path / "plain.model").write_bytes(plain_model_bytes)
    args = ["images", "--input", _png_manifest(tmp_path), "--tokenizer", str(tmp_path / "plain.model")]
    assert main(args + ["--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "<start_of_turn>, <end_of_turn>, <start_of_image>, <end_of_image>" in err
    assert "--text_ids_only" in err and not (tmp_path / "o" / "summary.json").exists()
    assert main(args + ["--output_dir", str(tmp_path / "o2"), "--text_ids_only"]) == 0
    from medprep.schemas import read_records

    (rec,) = read_records(str(tmp_path / "o2" / "parquet"))
    assert rec["text_ids"] and rec["prompt_ids"] and rec["input_ids"] == [] and rec["loss_mask"] == []
    assert rec["messages"] == (
        '[{"role":"user","content":[{"type":"image"},{"type":"text","text":"p"}]},'
        '{"role":"assistant","content":[{"type":"text","text":"t"}]}]'
    )


def test_summary_describes_the_tokenizer(tmp_path, demo_model_path, demo_model_bytes):
    import hashlib
    import json

    from medprep.pipelines.cli.main import run_pipeline

    s = run_pipeline(
        "images",
        [
            "--input",
            _png_manifest(tmp_path),
            "--output_dir",
            str(tmp_path / "o"),
            "--tokenizer",
            demo_model_path,
            "--system_prompt",
            "Be brief.",
        ],
    )
    info = s["config"]["tokenizer_info"]
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == 641 and info["chat"] is True
    assert info["special_ids"] == {
        "bos": 2,
        "start_of_turn": 6,
        "end_of_turn": 7,
        "start_of_image": 8,
        "end_of_image": 9,
        "image_soft_token": 640,
    }
    assert info["chat_template"] == "builtin:gemma3"
    assert info["chat_template_sha256"] == hashlib.sha256(b"builtin:gemma3").hexdigest()
    assert info["sha256"] == hashlib.sha256(demo_model_bytes).hexdigest()
    assert s["config"]["system_prompt"] == "Be brief." and s["truncated"] == {"prompt": 0, "text": 0}
    from medprep.schemas import read_records

    (rec,) = read_records(str(tmp_path / "o" / "arrayrecord"))
    assert json.loads(rec["messages"])[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}


def test_over_long_text_is_truncated_in_ids_and_messages_alike(tmp_path, demo_model_path):
    import json

    from medprep.pipelines.cli.main import run_pipeline
    from medprep.transforms.text import SentencePieceTokenizer

    long_text = "Findings: mild cardiomegaly. " * 20
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": long_text}) + "\n")
    _png_manifest(tmp_path)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": long_text}) + "\n")
    s = run_pipeline(
        "images",
        [
            "--input",
            str(tmp_path / "m.jsonl"),
            "--output_dir",
            str(tmp_path / "o"),
            "--tokenizer",
            demo_model_path,
            "--max_text_tokens",
            "10",
        ],
    )
    assert s["truncated"] == {"prompt": 0, "text": 1}
    from medprep.schemas import read_records

    (rec,) = read_records(str(tmp_path / "o" / "parquet"))
    tok = SentencePieceTokenizer.from_file(demo_model_path)
    assert rec["text"] == long_text and len(rec["text_ids"]) == 10
    messages = json.loads(rec["messages"])
    response = messages[-1]["content"][0]["text"]
    assert long_text.startswith(response) and tok.encode(response)[0] == rec["text_ids"]
    assert tok.chat(messages).input_ids == rec["input_ids"]
