"""End to end with Hugging Face: medprep's Parquet, loaded with `datasets`, equals what Gemma3Processor builds
from the records' own messages and images, and trains a tiny Gemma3ForConditionalGeneration on CPU
(randomly initialised from a config: nothing downloaded)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from hf_reference import hf_processor  # noqa: E402
from medprep.pipelines.cli.main import run_pipeline  # noqa: E402
from medprep.schemas import IGNORE_INDEX, hf_dataset, image_token_id, model_batch  # noqa: E402
from medprep.transforms.chat import with_images  # noqa: E402
from medprep.transforms.image import prepare_image  # noqa: E402

SYSTEM = "You are an expert radiologist."


@pytest.fixture(scope="module")
def output(tmp_path_factory, demo_model_path):
    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (120, 90)), ("b.png", (64, 64)), ("prior.png", (80, 100))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / name)
    rows = [
        {"id": "1", "image": "a.png", "prompt": "Describe this X-ray.", "text": "\nClear lungs.\n", "patient_id": "p1"},
        {
            "id": "2",
            "image": "b.png",
            "prior": "prior.png",
            "prompt": "Compare with the prior.",
            "text": "Interval resolution of the effusion.",
            "patient_id": "p2",
        },
        {"id": "3", "image": "b.png", "boxes": [[4, 8, 40, 50]], "box_labels": ["nodule"], "patient_id": "p3"},
    ]
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "out"
    run_pipeline(
        "images",
        [
            "--input",
            str(d / "m.jsonl"),
            "--output_dir",
            str(out),
            "--tokenizer",
            demo_model_path,
            "--system_prompt",
            SYSTEM,
        ],
    )
    return d, out


@pytest.fixture(scope="module")
def processor(demo_model_path, tmp_path_factory):
    return hf_processor(demo_model_path, str(tmp_path_factory.mktemp("hf")))


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_parquet_records_equal_the_processor(output, processor):
    _, out = output
    ds = hf_dataset(str(out), split="train")
    assert len(ds) == 3
    for rec in ds:
        messages = json.loads(rec["messages"])
        assert messages[0] == {"role": "system", "content": [{"type": "text", "text": SYSTEM}]}
        images = [img.convert("RGB") for img in rec["images"]]
        hf = processor.apply_chat_template(with_images(messages, images), tokenize=True, return_dict=True)
        assert list(np.asarray(hf["input_ids"]).reshape(-1)) == rec["input_ids"]
        assert len(rec["loss_mask"]) == len(rec["input_ids"])


def test_batch_helper_equals_processor_batch(output, processor):
    _, out = output
    from medprep.schemas import read_records

    recs = sorted(read_records(str(out / "parquet")), key=lambda r: r["example_id"])
    batch = model_batch(recs, image_token_id(str(out)))
    texts = [processor.apply_chat_template(json.loads(r["messages"]), tokenize=False) for r in recs]
    images = [[_pil(b) for b in r["images"]] for r in recs]
    hf = processor(text=texts, images=images, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(batch[key], hf[key]), key
    assert batch["pixel_values"].shape == hf["pixel_values"].shape == (4, 3, 896, 896)
    assert np.abs(batch["pixel_values"] - hf["pixel_values"]).max() < 1e-6
    mask = np.zeros_like(batch["input_ids"])
    for i, r in enumerate(recs):
        mask[i, mask.shape[1] - len(r["loss_mask"]) :] = r["loss_mask"]
    assert ((batch["labels"] == IGNORE_INDEX) == (mask == 0)).all()
    assert (batch["labels"][mask == 1] == batch["input_ids"][mask == 1]).all()


def test_serving_messages_give_the_training_prompt(output, processor):
    """prepare_image(...).messages through apply_chat_template(add_generation_prompt=True) is exactly the prompt
    part of the record's input_ids."""
    d, out = output
    from medprep.schemas import read_records

    rec = [r for r in read_records(str(out / "parquet")) if r["prompt"] == "Describe this X-ray."][0]
    p = prepare_image(str(d / "a.png"), prompt="Describe this X-ray.", system_prompt=SYSTEM)
    assert p.encoded == rec["images"]
    hf = processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt = list(np.asarray(hf["input_ids"]).reshape(-1))
    assert rec["input_ids"][: len(prompt)] == prompt and rec["loss_mask"][: len(prompt)] == [0] * len(prompt)
    assert rec["loss_mask"][len(prompt)] == 1


def _tiny_gemma3(vocab_size: int, image_token: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=4096,
        sliding_window=512,
        pad_token_id=0,
    )
    vision = SiglipVisionConfig(
        image_size=896, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        image_token_index=image_token,
        boi_token_index=8,
        eoi_token_index=9,
    )
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(config)


def test_tiny_gemma3_trains_on_the_records(output):
    _, out = output
    from medprep.schemas import read_records

    recs = sorted(read_records(str(out / "parquet")), key=lambda r: r["example_id"])
    image_token = image_token_id(str(out))
    batch = {k: torch.from_numpy(v) for k, v in model_batch(recs, image_token).items()}
    model = _tiny_gemma3(image_token + 1, image_token)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.7, losses
