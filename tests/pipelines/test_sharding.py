"""Shard planning: counts known from the inputs, before any record exists."""

from medprep.pipelines.io.sinks import TARGET_SHARD_BYTES, image_bytes_estimate, plan_shards, shard_of
from medprep.pipelines.records.split import split_fractions


def test_image_bytes_estimate():
    assert image_bytes_estimate(896, "png") == int(896 * 896 * 3 * 0.25) == 602112
    assert image_bytes_estimate(896, "jpeg") == int(896 * 896 * 3 * 0.08)


def test_plan_by_size_from_input_count():
    per = 602112  # one 896² PNG per input
    per_shard = TARGET_SHARD_BYTES // per  # 222 inputs fill 128 MiB
    assert per_shard == 222
    assert plan_shards(222, 0, {"train": 1.0}, per) == {"train": 1}
    assert plan_shards(223, 0, {"train": 1.0}, per) == {"train": 2}
    assert plan_shards(377_000, 0, {"train": 1.0}, per) == {"train": 1692}
    # a volume input carries 85 slices: ~51 MB, so 2.6 inputs per shard
    assert plan_shards(100, 0, {"train": 1.0}, 85 * per) == {"train": 39}


def test_plan_per_split_and_requested():
    fractions = split_fractions(0.1, 0.05)
    assert fractions == {"train": 0.85, "val": 0.1, "test": 0.05}
    assert plan_shards(1000, 8, fractions, 1) == {"train": 8, "val": 8, "test": 8}
    # never more shards than a split's expected inputs: ceil(30 * 0.05) = 2
    assert plan_shards(30, 8, fractions, 1) == {"train": 8, "val": 3, "test": 2}
    assert plan_shards(0, 0, {"train": 1.0}, 1) == {"train": 1}
    assert split_fractions(0.0, 0.0) == {"train": 1.0}


def test_shard_of_uses_the_hex_id():
    assert shard_of("00000000000000ff" + "0" * 16, 7) == 255 % 7
    assert shard_of("ffffffffffffffff" + "0" * 16, 1) == 0
