"""Fan-out parts (pipelines/io/fanout_parts.py): a work item's encoded images staged where they are rendered,
references through the fan-in GroupByKey, the bytes read back one record at a time."""

import dataclasses
import json
import os
import pickle

import apache_beam as beam
import pytest
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from medprep.pipelines.config import Config
from medprep.pipelines.io.fanout_parts import (
    ImageReader,
    StagedImage,
    fan_out_dir,
    part_name,
    read_back,
    stage_units,
)
from medprep.pipelines.io.manifest import read_manifest
from medprep.samples import synthetic_slide_rgb, write_series, write_svs

PNG = b"\x89PNG\r\n\x1a\n"


def _parts(config):
    folder = fan_out_dir(config.write_dir)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_stage_units_writes_one_part_and_reads_back(tmp_path):
    folder = str(tmp_path / "parts")
    name = part_name("3:/data/ct", "1.2.3/9")
    staged = stage_units(folder, name, iter([("a", b"first"), ("b", None), ("c", b"third!")]))
    assert [unit for unit, _ in staged] == ["a", "b", "c"] and staged[1][1] is None
    a, c = staged[0][1], staged[2][1]
    assert (a.part, a.offset, a.size, c.offset, c.size, len(c)) == (name, 0, 5, 5, 6, 6)
    assert os.listdir(folder) == [name] and (tmp_path / "parts" / name).read_bytes() == b"firstthird!"
    assert "ct" not in name and name == part_name("3:/data/ct", "1.2.3/9") != part_name("3:/data/ct", "1.2.3/17")
    error = beam.pvalue.TaggedOutput("errors", {"row": 1})
    record = {"example_id": "x", "images": [c, a, b"inline"]}
    windowed = WindowedValue({"images": [a]}, 0, (GlobalWindow(),))  # as ItemDoFn emits from finish_bundle
    out = list(read_back([record, error, windowed], folder))
    assert out[0]["images"] == [b"third!", b"first", b"inline"] and out[1] is error
    assert out[2].value == {"images": [b"first"]} and out[2].windows == windowed.windows
    assert record["images"][0] is c  # the record built with references is not changed in place


def test_records_are_read_back_one_at_a_time(tmp_path):
    """read_back reads a record's images only when that record is taken: the next record's part is not read
    yet (here: spoiled after the first record was taken, which only the second record's read sees)."""
    folder = str(tmp_path / "parts")
    [(_, first)] = stage_units(folder, "1.images", [("a", b"one")])
    [(_, second)] = stage_units(folder, "2.images", [("b", b"two")])
    records = read_back(iter([{"images": [first]}, {"images": [second]}]), folder)
    assert next(records)["images"] == [b"one"]
    (tmp_path / "parts" / "2.images").write_bytes(b"TWO")
    with pytest.raises(OSError, match="does not hold the image"):
        next(records)


def test_a_part_that_does_not_hold_what_was_staged_is_an_error(tmp_path):
    folder = str(tmp_path / "parts")
    [(_, ref)] = stage_units(folder, "p.images", [("a", b"abcdef")])
    (tmp_path / "parts" / "p.images").write_bytes(b"abcdeX")
    reader = ImageReader(folder)
    with pytest.raises(OSError, match="does not hold the image"):
        reader.read(ref)
    with pytest.raises(OSError):
        reader.read(StagedImage("p.images", 4, 10, 0))  # the part ends before it
    reader.close()


# ---- the Work steps: what they hand to the GroupByKey ----------------------------------------------


def _volume_batches(tmp_path, image_size, slices=12):
    from medprep.pipelines.graphs.volumes import PlanVolumes

    write_series(str(tmp_path / "ct"), slices)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": str(tmp_path / "ct"), "text": "CT.", "patient_id": "P"}))
    config = dataclasses.replace(
        Config(),
        input=str(tmp_path / "m.jsonl"),
        output_dir=str(tmp_path / "out"),
        staging_dir=str(tmp_path / "out" / ".staging-t"),
        image_size=image_size,
        slice_selection="all",
    )
    plan = PlanVolumes(config)
    plan.setup()
    [row] = read_manifest(config.input)
    return config, [batch for batch, _ in plan.outputs(row)]


def _render(config, batch):
    from medprep.pipelines.graphs.volumes import RenderSlices

    work = RenderSlices(config)
    work.setup()
    return list(work.process(batch))


@pytest.mark.parametrize("size", [64, 512])
def test_render_slices_hands_on_references_whatever_the_image_size(tmp_path, size):
    """What RenderSlices gives the GroupByKey is a few KB per slice, the same for 64² and 512² images, and
    holds no image (no PNG signature); the images wait in one part per batch, in the staging folder."""
    config, batches = _volume_batches(tmp_path, size)
    assert [len(b.numbers) for b in batches] == [8, 4]
    grouped = [element for batch in batches for element in _render(config, batch)]
    sizes = [len(pickle.dumps(element)) for element in grouped]
    assert len(grouped) == 12 and max(sizes) < 4096 and PNG not in pickle.dumps(grouped)
    assert all(r.finished.encoded == b"" and r.staged is not None for _, r in grouped)
    parts = _parts(config)
    assert parts == sorted(part_name(b.key, b.work_id) for b in batches)
    assert fan_out_dir(config.write_dir).startswith(config.staging_dir)
    reader = ImageReader(fan_out_dir(config.write_dir))
    images = [reader.read(r.staged) for _, r in grouped]
    reader.close()
    assert all(image.startswith(PNG) for image in images)
    assert min(len(i) for i in images) > (max(sizes) if size == 512 else 0)
    # the size of a grouped element does not depend on the image's: pad/scale digits differ, no more
    other = tmp_path / "other"
    other.mkdir()
    config2, batches2 = _volume_batches(other, 1024 if size == 64 else 32)
    sizes2 = [len(pickle.dumps(e)) for b in batches2 for e in _render(config2, b)]
    assert abs(max(sizes2) - max(sizes)) < 64


def test_what_is_grouped_per_slice_does_not_grow_with_the_series(tmp_path):
    """A slice of a 12-slice and of a 200-slice series cross the grouping with about the same bytes: the
    series' plan (its selected indices) and QC stay behind, in each slice's info where records need them."""
    sizes = {}
    for slices in (12, 200):
        (tmp_path / str(slices)).mkdir()
        config, batches = _volume_batches(tmp_path / str(slices), 64, slices)
        grouped = _render(config, batches[0])
        assert all(r.meta.plan is None and r.finished.info["series"] for _, r in grouped)
        sizes[slices] = max(len(pickle.dumps(e)) for e in grouped)
    assert abs(sizes[200] - sizes[12]) < 64, sizes


def test_a_retried_work_item_overwrites_its_own_part(tmp_path):
    """A work item run again (a retried bundle, on another worker) writes the same part name, replacing what
    the first attempt left (here: a part cut short by a crash); its references read the same bytes."""
    config, batches = _volume_batches(tmp_path, 64)
    first = _render(config, batches[0])
    name = part_name(batches[0].key, batches[0].work_id)
    path = os.path.join(fan_out_dir(config.write_dir), name)
    whole = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(whole[: len(whole) // 3])  # a crashed attempt's leftover
    again = _render(config, batches[0])
    assert _parts(config) == [name] and open(path, "rb").read() == whole
    assert [r.staged for _, r in again] == [r.staged for _, r in first]
    reader = ImageReader(fan_out_dir(config.write_dir))
    assert all(reader.read(r.staged).startswith(PNG) for _, r in again)
    reader.close()


def test_read_patches_hands_on_references(tmp_path):
    from medprep.pipelines.graphs.slides import PlanSlides, ReadPatches

    write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(2048, 1536, seed=4), mpp=1.0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": str(tmp_path / "s.svs"), "text": "Tissue."}))
    config = dataclasses.replace(
        Config(),
        input=str(tmp_path / "m.jsonl"),
        output_dir=str(tmp_path / "out"),
        staging_dir=str(tmp_path / "out" / ".staging-t"),
        image_size=224,
        patch_size=224,
        stride=224,
        max_patches=12,
    )
    plan, work = PlanSlides(config), ReadPatches(config)
    plan.setup()
    work.setup()
    [row] = read_manifest(config.input)
    batches = [batch for batch, _ in plan.outputs(row)]
    grouped = [element for batch in batches for element in work.process(batch)]
    plan.teardown()
    work.teardown()
    assert len(batches) == 2 and len(grouped) == 12 and PNG not in pickle.dumps(grouped)
    assert max(len(pickle.dumps(e)) for e in grouped) < 4096
    assert _parts(config) == sorted(part_name(b.key, b.work_id) for b in batches)
