"""Every format the pipelines write, through every loader, decodes to exactly what was written."""

import os

import numpy as np
import pytest

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import make_images_samples
from medprep.schemas import arrayrecord_files, decode_example, grain_source, hf_dataset, read_records, to_model_input


@pytest.fixture(scope="module")
def out(tmp_path_factory, demo_model_path):
    d = tmp_path_factory.mktemp("loaders")
    manifest = make_images_samples(str(d / "samples"))
    o = d / "out"
    run_pipeline(
        "images",
        [
            "--input",
            manifest,
            "--output_dir",
            str(o),
            "--tokenizer",
            demo_model_path,
            "--num_shards",
            "2",
            "--split_salt",
            "x",
            "--max_error_fraction",
            "1",  # 2 of the 13 sample rows fail on purpose
        ],
    )
    return str(o)


@pytest.fixture(scope="module")
def written(out):
    by_id = {r["example_id"]: r for r in read_records(os.path.join(out, "arrayrecord"))}
    assert by_id == {r["example_id"]: r for r in read_records(os.path.join(out, "parquet"))}
    return by_id


def test_grain_map_dataset_over_our_source(out, written):
    import grain

    ds = grain.MapDataset.source(grain_source(out, split="train")).shuffle(seed=3).map(lambda r: r["example_id"])
    assert sorted(ds[i] for i in range(len(ds))) == sorted(k for k, r in written.items() if r["split"] == "train")


def test_grain_dataloader_over_grains_own_arrayrecord_source(out, written):
    import grain.python as gp

    class Decode(gp.MapTransform):
        def map(self, element):
            return decode_example(element)

    source = gp.ArrayRecordDataSource(arrayrecord_files(out, split="train"))
    loader = gp.DataLoader(
        data_source=source,
        sampler=gp.IndexSampler(len(source), shard_options=gp.NoSharding(), shuffle=True, num_epochs=1, seed=0),
        operations=[Decode()],
        worker_count=0,
    )
    seen = {rec["example_id"]: rec for rec in loader}
    assert seen == {k: r for k, r in written.items() if r["split"] == "train"}


def test_torch_map_and_iterable_datasets(out, written):
    import torch.utils.data as tud

    from medprep.schemas.torch_data import RecordDataset, ShardIterableDataset

    ds = RecordDataset(out)
    assert len(ds) == len(written) and {ds[i]["example_id"] for i in range(len(ds))} == set(written)
    loader = tud.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)
    assert {r["example_id"]: r for batch in loader for r in batch} == written
    for fmt in ("arrayrecord", "parquet"):
        it = ShardIterableDataset(os.path.join(out, fmt), transform=lambda r: (r["example_id"], r))
        got = dict(rec for batch in tud.DataLoader(it, batch_size=3, num_workers=2, collate_fn=list) for rec in batch)
        assert got == written, fmt


def test_torch_model_input_transform(out, written):
    import torch.utils.data as tud

    from medprep.schemas.torch_data import RecordDataset

    ds = RecordDataset(out, split="train", transform=lambda r: to_model_input(r["images"][0], channels_first=True))
    batch = next(iter(tud.DataLoader(ds, batch_size=2)))
    assert tuple(batch.shape) == (2, 3, 896, 896) and float(batch.min()) >= -1 and float(batch.max()) <= 1


def test_hf_one_liner(out, written):
    ds = hf_dataset(out, split="train")
    train = {k: r for k, r in written.items() if r["split"] == "train"}
    assert len(ds) == len(train)
    row = ds[0]
    rec = train[row["example_id"]]
    assert row["text"] == rec["text"] and row["input_ids"] == rec["input_ids"] and row["boxes"] == rec["boxes"]
    img = row["images"][0]
    assert img.size == (896, 896) and np.array_equal(np.asarray(img.convert("RGB")), np.asarray(_pil(rec["images"][0])))


def _pil(data):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def test_model_input_matches_independent_computation_including_resize():
    """to_model_input against a from-scratch numpy bilinear (antialiased, as Pillow) on a 2x downscale."""
    import io

    from PIL import Image

    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    x = to_model_input(buf.getvalue(), size=4)

    # Pillow BILINEAR at scale 1/2: triangle filter of support 2 -> weights 1/8, 3/8, 3/8, 1/8 (edge-normalized)
    def axis_weights(n_in, n_out):
        scale = n_in / n_out
        w = np.zeros((n_out, n_in))
        for o in range(n_out):
            center = (o + 0.5) * scale
            for i in range(n_in):
                w[o, i] = max(0.0, 1 - abs((i + 0.5 - center) / scale))
            w[o] /= w[o].sum()
        return w

    wy, wx = axis_weights(8, 4), axis_weights(8, 4)
    ref = np.einsum("oi,ijc,pj->opc", wy, arr.astype(np.float64), wx)
    ref = np.clip(np.round(ref), 0, 255) / 255.0
    assert np.allclose(x, (ref - 0.5) / 0.5, atol=2 / 255)
