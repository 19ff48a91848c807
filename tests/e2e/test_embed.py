"""`medprep embed` end to end with tiny randomly initialised encoders built from transformers configs
(nothing downloaded): a SigLIP checkpoint as MedSigLIP ships it (SiglipModel, image + text), a SigLIP
vision-only checkpoint, and a Gemma 3 checkpoint whose vision tower + multimodal projector are read.
The pipeline's vectors are compared with transformers' own image processor and forward pass."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from medprep.pipelines.cli.main import run_pipeline  # noqa: E402
from medprep.pipelines.tools.embed_verify import verify_embeddings  # noqa: E402
from medprep.schemas import read_records  # noqa: E402
from medprep.schemas.embedding_readers import embedding_matrix, read_embeddings  # noqa: E402
from medprep.transforms.embed import ModelFolderError, embed_images, load_encoder  # noqa: E402

SIDE = 224


def _perturb(model, seed: int) -> None:
    """Every parameter moved off its initial value (Gemma 3's projector and RMSNorm start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _siglip_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=SIDE, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    """A SiglipModel checkpoint (vision + text, as MedSigLIP ships) with a SigLIP image processor."""
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    folder = tmp_path_factory.mktemp("models") / "tiny-medsiglip"
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(vision_config=_siglip_vision_config().to_dict(), text_config=text))
    _perturb(model, 1)
    model.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    """A tiny Gemma3ForConditionalGeneration checkpoint (SigLIP 896/14 tower, 256 tokens per image)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    folder = tmp_path_factory.mktemp("models") / "tiny-gemma3"
    text = Gemma3TextConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
    )
    vision = SiglipVisionConfig(
        image_size=896,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vision_use_head=False,
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(
        Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256, image_token_index=299)
    )
    _perturb(model, 2)
    model.save_pretrained(folder)
    Gemma3ImageProcessorPil(
        size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images_out(tmp_path_factory):
    """`medprep images` output: 6 examples (one longitudinal: 2 images) = 7 images, train and val."""
    d = tmp_path_factory.mktemp("embed_in")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(d / f"{i}.png")
        rows.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "text": f"finding {i}",
                "label": "yes" if i % 2 else "no",
                "patient_id": f"p{i}",
            }
        )
    rows.append({"id": "long", "image": "1.png", "prior": "2.png", "text": "compare", "patient_id": "p9"})
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "out"
    run_pipeline(
        "images",
        [
            "--input",
            str(d / "m.jsonl"),
            "--output_dir",
            str(out),
            "--image_size",
            str(SIDE),
            "--split_salt",
            "s",
            "--val_fraction",
            "0.3",
        ],
    )
    return str(out)


def _records(out: str, fmt: str = "arrayrecord") -> list[dict]:
    return list(read_records(os.path.join(out, fmt)))


def _embed(args: list[str]) -> int:
    """`medprep embed …` through the command line (the registry's tool entry)."""
    from medprep.pipelines.cli.main import main

    return main(["embed", *args])


@pytest.fixture(scope="module")
def siglip_emb(images_out, siglip_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("emb") / "siglip")
    assert (
        _embed(
            [
                "--input",
                images_out,
                "--model",
                siglip_folder,
                "--output_dir",
                out,
                "--pooling",
                "both",
                "--batch_size",
                "3",
            ]
        )
        == 0
    )
    return out


def _reference(folder: str, kind: str, data: bytes):
    """transformers' own image processor and forward pass on one image: (pooled, tokens)."""
    from transformers import AutoImageProcessor, Gemma3ForConditionalGeneration, SiglipModel

    pixels = AutoImageProcessor.from_pretrained(folder, backend="pil")(
        images=[Image.open(io.BytesIO(data))], return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        if kind == "siglip":
            out = SiglipModel.from_pretrained(folder).eval().get_image_features(pixel_values=pixels)
            return out.pooler_output[0].numpy(), out.last_hidden_state[0].numpy()
        model = Gemma3ForConditionalGeneration.from_pretrained(folder).eval()
        tokens = model.model.get_image_features(pixel_values=pixels).pooler_output[0].numpy()
        return tokens.mean(axis=0), tokens


def test_siglip_pipeline_equals_transformers(siglip_emb, images_out, siglip_folder):
    summary = json.load(open(os.path.join(siglip_emb, "summary.json")))
    assert (summary["inputs"], summary["embeddings"], summary["errors"], summary["reconciled"]) == (7, 7, 0, True)
    assert summary["by_task"] == {"image_text": 5, "longitudinal": 2}
    records = {r["example_id"]: r for r in _records(images_out)}
    rows = list(read_embeddings(os.path.join(siglip_emb, "parquet")))
    assert sorted((r["example_id"], r["image_index"]) for r in rows) == sorted(
        (eid, i) for eid, r in records.items() for i in range(len(r["images"]))
    )
    info = load_encoder(siglip_folder).info
    for row in rows:
        rec = records[row["example_id"]]
        pooled, tokens = _reference(siglip_folder, "siglip", rec["images"][row["image_index"]])
        assert row["embedding"].shape == (32,) and row["tokens"].shape == (14, 14, 32)
        assert np.abs(row["embedding"] - pooled).max() <= 1e-5
        assert np.abs(row["tokens"].reshape(196, 32) - tokens).max() <= 1e-5
        assert pooled.std() > 0.01
        assert (row["split"], row["label"], row["task"], row["patient_key"]) == (
            rec["split"],
            rec["label"],
            rec["task"],
            rec["patient_key"],
        )
        assert row["source"] == rec["source"][row["image_index"]]
        assert row["record_config_hash"] == rec["config_hash"]
        assert (row["model"], row["model_hash"], row["image_size"], row["dtype"]) == (
            "tiny-medsiglip",
            info.model_hash,
            [SIDE, SIDE],
            "float32",
        )
        norm = json.loads(row["normalization"])
        assert (norm["image_mean"], norm["image_std"], norm["resample"], norm["rescale_factor"]) == (
            [0.5] * 3,
            [0.5] * 3,
            "bicubic",
            1 / 255,
        )
    assert summary["model"]["model_hash"] == info.model_hash and summary["model"]["embedding_dim"] == 32


def test_both_formats_hold_the_same_rows_and_verify(siglip_emb):
    a = {(r["example_id"], r["image_index"]): r for r in read_embeddings(os.path.join(siglip_emb, "arrayrecord"))}
    b = {(r["example_id"], r["image_index"]): r for r in read_embeddings(os.path.join(siglip_emb, "parquet"))}
    assert set(a) == set(b) and len(a) == 7
    for key in a:
        assert np.array_equal(a[key]["embedding"], b[key]["embedding"])
        assert np.array_equal(a[key]["tokens"], b[key]["tokens"])
    problems, facts = verify_embeddings(siglip_emb)
    from medprep.pipelines.cli.main import main

    assert main(["verify", siglip_emb]) == 0  # `medprep verify` recognizes an embed output
    assert problems == [] and facts["input_checked"] and facts["input_images"] == 7


def test_verify_finds_a_missing_row(siglip_emb, tmp_path):
    import pyarrow.parquet as pq

    copy = tmp_path / "emb"
    shutil.copytree(siglip_emb, copy)
    shard = sorted((copy / "parquet").iterdir())[0]
    table = pq.read_table(shard)
    pq.write_table(table.slice(1), shard)
    problems, _ = verify_embeddings(str(copy))
    assert (
        f"parquet/{shard.name}: summary lists {table.num_rows} rows, the shard holds {table.num_rows - 1}" in problems
    )
    assert "ArrayRecord and Parquet hold different rows" in problems


def test_embed_images_gives_the_pipeline_vectors(siglip_emb, images_out, siglip_folder):
    """The same images in the same batches (the shard's images in order, --batch_size 3) give the same bits."""
    encoder = load_encoder(siglip_folder)
    for split in ("train", "val"):
        images = [img for r in _records(images_out) if r["split"] == split for img in r["images"]]
        keys, pooled = embedding_matrix(siglip_emb, split=split)
        _, tokens = embedding_matrix(siglip_emb, split=split, field="tokens")
        out = embed_images(images, encoder, pooling="both", batch_size=3)
        assert np.array_equal(out.pooled, pooled) and np.array_equal(out.tokens, tokens)
        assert out.pooled.shape == (len(images), 32) and out.tokens.shape == (len(images), 14, 14, 32)
        alone = embed_images(images, encoder, batch_size=1).pooled  # other batches: equal within float noise
        assert np.abs(alone - pooled).max() <= 1e-5


def test_pixel_values_are_the_processors_bit_for_bit(siglip_folder, tmp_path):
    """Another mean/std/resample in preprocessor_config.json: the encoder follows it, value for value."""
    from transformers import AutoImageProcessor

    folder = tmp_path / "custom"
    shutil.copytree(siglip_folder, folder)
    config = json.load(open(folder / "preprocessor_config.json"))
    config.update(image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7], resample=2)
    json.dump(config, open(folder / "preprocessor_config.json", "w"))
    encoder = load_encoder(str(folder))
    processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    rng = np.random.default_rng(5)
    for image in (
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (50, 40), dtype=np.uint8)),
    ):  # grey: the processor itself
        expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
        assert np.array_equal(encoder.pixel_values(image), expected)
    assert json.loads(encoder.info.normalization)["image_mean"] == [0.1, 0.2, 0.3]
    assert json.loads(encoder.info.normalization)["resample"] == "bilinear"
    assert encoder.info.model_hash != load_encoder(siglip_folder).info.model_hash


def test_vision_only_folder_and_dtypes(tmp_path, images_out):
    from transformers import SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(3)
    model = SiglipVisionModel(_siglip_vision_config())
    model.save_pretrained(tmp_path / "vision")
    SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE}).save_pretrained(tmp_path / "vision")
    images = [img for r in _records(images_out) for img in r["images"]][:4]
    pixels = np.stack([load_encoder(str(tmp_path / "vision")).pixel_values(img) for img in images])
    with torch.no_grad():
        ref = SiglipVisionModel.from_pretrained(tmp_path / "vision").eval()(pixel_values=torch.from_numpy(pixels))
    out = embed_images(images, str(tmp_path / "vision"), pooling="tokens", batch_size=4)
    assert out.pooled is None and np.abs(out.tokens.reshape(4, 196, 32) - ref.last_hidden_state.numpy()).max() <= 1e-5
    half = embed_images(images, str(tmp_path / "vision"), dtype="bfloat16", batch_size=4)
    assert half.pooled.dtype == np.float32 and half.info.dtype == "bfloat16"
    assert 0 < np.abs(half.pooled - ref.pooler_output.numpy()).max() < 0.1


def test_gemma3_visual_tokens(gemma_folder, images_out, tmp_path):
    out = str(tmp_path / "gemma")
    assert (
        _embed(
            [
                "--input",
                images_out,
                "--model",
                gemma_folder,
                "--output_dir",
                out,
                "--pooling",
                "both",
                "--batch_size",
                "4",
            ]
        )
        == 0
    )
    records = {r["example_id"]: r for r in _records(images_out)}
    rows = list(read_embeddings(out))
    assert len(rows) == 7
    for row in rows[:3]:
        pooled, tokens = _reference(gemma_folder, "gemma3", records[row["example_id"]]["images"][row["image_index"]])
        assert row["tokens"].shape == (16, 16, 48) and row["embedding"].shape == (48,)
        assert np.abs(row["tokens"].reshape(256, 48) - tokens).max() <= 1e-5
        assert np.abs(row["embedding"] - pooled).max() <= 1e-5 and tokens.std() > 0.01
        assert row["image_size"] == [896, 896] and json.loads(row["normalization"])["resample"] == "bilinear"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["model"]["kind"] == "gemma3" and summary["model"]["token_grid"] == [16, 16, 48]


def test_gemma3_reads_only_the_vision_weights(gemma_folder):
    from safetensors import safe_open

    encoder = load_encoder(gemma_folder)
    names = set(encoder.module.state_dict())
    with safe_open(os.path.join(gemma_folder, "model.safetensors"), "pt") as fh:
        stored = set(fh.keys())
    language = {k for k in stored if "language_model" in k}
    assert language and not any("language_model" in n for n in names)
    assert len(names) == len(stored) - len(language)


@pytest.fixture(scope="module")
def slides_out(tmp_path_factory):
    from medprep.samples import synthetic_slide_rgb, write_svs

    d = tmp_path_factory.mktemp("embed_slides")
    write_svs(str(d / "a.svs"), synthetic_slide_rgb(6144, 4096, seed=1), mpp=0.25)
    (d / "m.jsonl").write_text(json.dumps({"id": "a", "image": "a.svs", "text": "carcinoma"}) + "\n")
    out = d / "out"
    run_pipeline(
        "slides",
        [
            "--input",
            str(d / "m.jsonl"),
            "--output_dir",
            str(out),
            "--patch_size",
            "224",
            "--image_size",
            "224",
            "--max_patches",
            "5",
            "--patches_per_example",
            "3",
            "--granularity",
            "slide,patch",
            "--split_salt",
            "s",
        ],
    )
    return str(d), str(out)


def test_slide_rows_carry_level0_coordinates(slides_out, siglip_folder, tmp_path):
    from medprep.transforms.image import ImageOptions
    from medprep.transforms.slide import SlideOptions, prepare_slide

    d, out = slides_out
    emb = str(tmp_path / "slides")
    assert _embed(["--input", out, "--model", siglip_folder, "--output_dir", emb, "--input_format", "parquet"]) == 0
    rows = list(read_embeddings(emb))
    plan = prepare_slide(
        os.path.join(d, "a.svs"),
        options=SlideOptions(image=ImageOptions(size=224), patch_size=224, stride=224, max_patches=5),
    )
    expected = sorted((i["x"], i["y"]) for i in plan.image_info)
    assert len(expected) == 5 and len(rows) == 10  # 5 patch records + 2 slide records of 3 and 2 patches
    by_task = {t: sorted(tuple(r["coords"]) for r in rows if r["task"] == t) for t in ("patch", "slide")}
    assert by_task == {"patch": expected, "slide": expected}
    # 10x from a 0.25 um/px slide: a 224-px patch covers 896 level-0 pixels at 1.0 um/px
    assert {(r["patch_size0"], r["mpp"]) for r in rows} == {(896.0, 1.0)}
    assert len({r["source"] for r in rows}) == 1  # one slide: one bag
    by_coords: dict = {}
    for r in rows:
        by_coords.setdefault(tuple(r["coords"]), []).append(r["embedding"])
    for vectors in by_coords.values():  # the same patch in a slide record and in a patch record
        assert len(vectors) == 2 and np.abs(vectors[0] - vectors[1]).max() <= 1e-5


def _shard_files(folder: str, sub: str) -> dict[str, bytes]:
    return {f: open(os.path.join(folder, sub, f), "rb").read() for f in sorted(os.listdir(os.path.join(folder, sub)))}


def test_corrupt_image_is_one_error_line(images_out, siglip_folder, siglip_emb, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "in"
    shutil.copytree(images_out, broken)
    shard = broken / "parquet" / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    images = table.column("images").to_pylist()
    victim = table.column("example_id")[0].as_py()
    images[0][0]["bytes"] = images[0][0]["bytes"][:100]
    table = table.set_column(
        table.schema.get_field_index("images"),
        table.schema.field("images"),
        pa.array(images, type=table.schema.field("images").type),
    )
    pq.write_table(table, shard)
    out = str(tmp_path / "emb")
    assert (
        _embed(
            [
                "--input",
                str(broken),
                "--model",
                siglip_folder,
                "--output_dir",
                out,
                "--input_format",
                "parquet",
                "--batch_size",
                "3",
                "--max_error_fraction",
                "0.5",  # 1 of 7 images is broken on purpose: above the default budget
            ]
        )
        == 0
    )
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert (summary["inputs"], summary["embeddings"], summary["errors"], summary["reconciled"]) == (7, 6, 1, True)
    assert summary["errors_by_stage"] == {"decode": 1}
    lines = [json.loads(x) for x in open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl"))]
    assert [(x["ref"], x["stage"], x["error"]) for x in lines] == [(f"{victim}/0", "decode", "ValueError")]
    clean = {(r["example_id"], r["image_index"]): r["embedding"] for r in read_embeddings(siglip_emb)}
    rows = {(r["example_id"], r["image_index"]): r["embedding"] for r in read_embeddings(out)}
    assert set(rows) == set(clean) - {(victim, 0)}
    assert max(np.abs(rows[k] - clean[k]).max() for k in rows) <= 1e-5
    assert verify_embeddings(out)[0] == []


def test_records_of_another_schema_are_error_lines(images_out, siglip_folder, tmp_path):
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    from medprep.schemas.embedding_codec import encode_embedding_row
    from medprep.schemas.embedding_fields import EMBEDDING_FIELDS, empty_embedding_value
    from medprep.schemas.example_codec import decode_example

    broken = tmp_path / "in"
    shutil.copytree(images_out, broken)
    rel = "arrayrecord/val-00000-of-00001.array_record"
    reader = ArrayRecordReader(str(broken / rel))
    data = reader.read_all()
    reader.close()
    garbage = open(os.path.join(images_out, "summary.json"), "rb").read()  # not a tf.train.Example at all
    row = {f.name: empty_embedding_value(f.kind) for f in EMBEDDING_FIELDS}
    row["example_id"] = "ab" * 16
    other = encode_embedding_row(row)  # a tf.train.Example of another schema (an embedding row)
    lost = sum(len(decode_example(d)["images"]) for d in data[:2])
    writer = ArrayRecordWriter(str(broken / rel), "group_size:1,uncompressed")
    for d in [garbage, other] + list(data[2:]):
        writer.write(d)
    writer.close()
    out = str(tmp_path / "emb")
    budget = ["--max_error_fraction", "1"]  # the foreign records fail on purpose
    assert _embed(["--input", str(broken), "--model", siglip_folder, "--output_dir", out, *budget]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert (summary["inputs"], summary["embeddings"], summary["errors"]) == (7 - lost + 2, 7 - lost, 2)
    assert summary["errors_by_class"] == {"RecordSchemaError": 2} and summary["reconciled"]
    lines = [json.loads(x) for x in open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl"))]
    assert sorted((x["ref"], x["stage"]) for x in lines) == [("ab" * 16 + "/0", "read"), (rel + "#0", "read")]
    assert any("record has no encoded images" in x["message"] for x in lines)


def test_two_worker_processes_give_identical_files(siglip_emb, images_out, siglip_folder, tmp_path):
    out = str(tmp_path / "mp")
    assert (
        _embed(
            [
                "--input",
                images_out,
                "--model",
                siglip_folder,
                "--output_dir",
                out,
                "--pooling",
                "both",
                "--batch_size",
                "3",
                "--direct_running_mode=multi_processing",
                "--direct_num_workers=2",
            ]
        )
        == 0
    )
    for sub in ("arrayrecord", "parquet", "errors"):
        assert _shard_files(out, sub) == _shard_files(siglip_emb, sub), sub
    assert len(_shard_files(out, "parquet")) == 2


def test_error_lines_go_to_sharded_files_counted_in_the_summary(images_out, siglip_folder, tmp_path, monkeypatch):
    # every image of the train shard is truncated: one decode error line each, 2 lines per error shard, on
    # two worker processes (rows, staged parts and error lines cross process boundaries pickled)
    import pyarrow as pa
    import pyarrow.parquet as pq

    import medprep.pipelines.graphs.embed as embed_graph

    broken = tmp_path / "in"
    shutil.copytree(images_out, broken)
    shard = broken / "parquet" / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    images = [[{**im, "bytes": im["bytes"][:100]} for im in row] for row in table.column("images").to_pylist()]
    victims = {
        f"{eid}/{i}" for eid, row in zip(table.column("example_id").to_pylist(), images) for i in range(len(row))
    }
    index = table.schema.get_field_index("images")
    pq.write_table(
        table.set_column(index, table.schema.field("images"), pa.array(images, type=table.schema.field(index).type)),
        shard,
    )
    monkeypatch.setattr(embed_graph, "ERROR_LINES_PER_SHARD", 2)
    out = str(tmp_path / "emb")
    args = ["--input", str(broken), "--model", siglip_folder, "--output_dir", out, "--input_format", "parquet"]
    workers = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert _embed([*args, "--batch_size", "3", "--max_error_fraction", "1", *workers]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    n = len(victims)
    assert n >= 3 and (summary["inputs"], summary["embeddings"], summary["errors"]) == (7, 7 - n, n)
    assert summary["errors_by_stage"] == {"decode": n} and summary["errors_by_class"] == {"ValueError": n}
    assert summary["reconciled"]
    error_files = [f for f in summary["files"] if f["path"].startswith("errors/")]
    shards = -(-n // 2)
    assert [f["path"] for f in error_files] == [f"errors/errors-{i:05d}-of-{shards:05d}.jsonl" for i in range(shards)]
    refs = []
    for f in error_files:
        lines = [json.loads(x) for x in open(os.path.join(out, f["path"]))]
        assert len(lines) == f["lines"] and all(x["stage"] == "decode" for x in lines)
        refs += [x["ref"] for x in lines]
    assert sorted(refs) == sorted(victims)
    assert not os.path.exists(os.path.join(out, ".records-tmp"))
    problems, facts = verify_embeddings(out)
    assert problems == [] and (facts["errors"], facts["embeddings"], facts["input_images"]) == (n, 7 - n, 7)


def _cli_refusal(args: list[str], capsys) -> str:
    assert _embed(args) == 2
    return capsys.readouterr().err


def test_missing_or_broken_model_is_refused_at_startup(images_out, siglip_folder, tmp_path, capsys):
    out = str(tmp_path / "never")
    missing = str(tmp_path / "no-such-model")
    err = _cli_refusal(["--input", images_out, "--model", missing, "--output_dir", out], capsys)
    assert "--model" in err and missing in err
    truncated = tmp_path / "truncated"
    shutil.copytree(siglip_folder, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    err = _cli_refusal(["--input", images_out, "--model", str(truncated), "--output_dir", out], capsys)
    assert "--model" in err and str(weights) in err
    no_processor = tmp_path / "no_processor"
    shutil.copytree(siglip_folder, no_processor)
    os.remove(no_processor / "preprocessor_config.json")
    err = _cli_refusal(["--input", images_out, "--model", str(no_processor), "--output_dir", out], capsys)
    assert "--model" in err and f"{no_processor}: no preprocessor_config.json" in err
    assert not os.path.exists(os.path.join(out, "summary.json"))


def test_model_folder_errors_name_what_is_wrong(siglip_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(siglip_folder, partial)
    tensors = load_file(partial / "model.safetensors")
    dropped = "vision_model.head.probe"
    save_file({k: v for k, v in tensors.items() if k != dropped}, partial / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"lacks 1 of the encoder's \d+ tensors \(first: head.probe\)"):
        load_encoder(str(partial))
    resized = tmp_path / "resized"
    shutil.copytree(siglip_folder, resized)
    config = json.load(open(resized / "preprocessor_config.json"))
    config["size"] = {"height": 448, "width": 448}
    json.dump(config, open(resized / "preprocessor_config.json", "w"))
    with pytest.raises(ModelFolderError, match="must resize to the model's 224x224 input"):
        load_encoder(str(resized))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFolderError, match="model_type 'bert' is not a supported vision encoder"):
        load_encoder(str(other))


def test_input_that_is_not_a_medprep_output_is_refused(siglip_emb, siglip_folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_refusal(["--input", str(empty), "--model", siglip_folder, "--output_dir", str(tmp_path / "o")], capsys)
    assert "--input" in err and f"{empty} is not a finished medprep output" in err
    err = _cli_refusal(["--input", siglip_emb, "--model", siglip_folder, "--output_dir", str(tmp_path / "o")], capsys)
    assert "--input" in err and "pipeline 'embed'" in err
    err = _cli_refusal(
        ["--input", siglip_emb, "--model", siglip_folder, "--output_dir", str(tmp_path / "o"), "--pooling", "mean"],
        capsys,
    )
    assert "--pooling" in err


@pytest.fixture(scope="module")
def gcs_bucket():
    """A local GCS emulator (gcp-storage-emulator) with one bucket; STORAGE_EMULATOR_HOST points at it."""
    from gcs_emulator import emulator_bucket

    with emulator_bucket("medprep-embed") as bucket:
        yield bucket


def test_gcs_input_model_and_output_give_the_local_files(
    gcs_bucket, siglip_emb, images_out, siglip_folder, monkeypatch
):
    for local, prefix in ((images_out, "data/out"), (siglip_folder, "models/tiny-medsiglip")):
        for root, _, files in os.walk(local):
            for f in files:
                path = os.path.join(root, f)
                gcs_bucket.blob(f"{prefix}/{os.path.relpath(path, local)}").upload_from_filename(path)
    base = "gs://medprep-embed"
    assert (
        _embed(
            [
                "--input",
                f"{base}/data/out",
                "--model",
                f"{base}/models/tiny-medsiglip",
                "--output_dir",
                f"{base}/emb",
                "--pooling",
                "both",
                "--batch_size",
                "3",
            ]
        )
        == 0
    )
    summary = json.loads(gcs_bucket.blob("emb/summary.json").download_as_bytes())
    assert summary["input"]["format"] == "parquet" and summary["reconciled"] and summary["embeddings"] == 7
    for sub in ("arrayrecord", "parquet"):
        for name, data in _shard_files(siglip_emb, sub).items():
            assert gcs_bucket.blob(f"emb/{sub}/{name}").download_as_bytes() == data, name
    import medprep.pipelines.io.outputs as outputs

    def no_copy(*_):
        raise AssertionError("the output was copied to a local folder")

    monkeypatch.setattr(outputs, "localize", no_copy, raising=False)  # verify reads gs:// in place
    problems, facts = verify_embeddings(f"{base}/emb")
    assert problems == [] and facts == verify_embeddings(siglip_emb)[1] and facts["input_images"] == 7
    # a row missing from a gs:// Parquet shard is found there
    import pyarrow.parquet as pq

    name = "emb/parquet/train-00000-of-00001.parquet"
    table = pq.read_table(io.BytesIO(gcs_bucket.blob(name).download_as_bytes()))
    buf = io.BytesIO()
    pq.write_table(table.slice(1), buf)
    gcs_bucket.blob(name).upload_from_string(buf.getvalue())
    problems, _ = verify_embeddings(f"{base}/emb")
    rows = table.num_rows
    assert f"parquet/train-00000-of-00001.parquet: summary lists {rows} rows, the shard holds {rows - 1}" in problems
    assert "ArrayRecord and Parquet hold different rows" in problems
