"""Options declared once (transforms.option_fields): the CLI per subcommand, the run config and summary.json
derive from the option dataclasses, and load_options rebuilds a finished run's inference options."""

import dataclasses
import json

import numpy as np
from PIL import Image

from medprep import load_options, prepare_image, prepare_series
from medprep.pipelines.cli.main import _parser, run_pipeline
from medprep.pipelines.config import OPTION_GROUPS, Config
from medprep.pipelines.registry import PIPELINES
from medprep.samples import write_series
from medprep.schemas import read_records
from medprep.transforms.option_fields import option_fields


def _subcommand_options(name):
    sub = _parser()._subparsers._group_actions[0].choices[name]
    return {a.option_strings[0] for a in sub._actions if a.option_strings and a.option_strings[0] != "-h"}


def test_each_subcommand_shows_its_own_options_only():
    images, volumes, slides = (_subcommand_options(n) for n in ("images", "volumes", "slides"))
    assert "--ct_preset" in images and "--ct_preset" in volumes and "--ct_preset" not in slides
    assert "--max_slices" in volumes and "--max_slices" not in images and "--max_slices" not in slides
    assert "--target_mpp" in slides and "--target_mpp" not in volumes
    assert "--granularity" in volumes and "--granularity" in slides and "--granularity" not in images
    assert "--dicomweb_url" in images and "--reports" in volumes and "--dicomweb_url" not in slides  # no discovery
    for name, spec in PIPELINES.items():  # every declared option of its groups, and nothing else
        declared = {f"--{o.cli}" for g in spec.groups for o in option_fields(g)}
        assert _subcommand_options(name) == declared, name


def test_config_fields_are_the_declared_options():
    declared = {o.name for g in OPTION_GROUPS for o in option_fields(g)} - {"split_salt"}
    fields = {f.name for f in dataclasses.fields(Config)}
    assert declared <= fields
    assert fields - declared == {
        "salt",
        "salt_is_default",
        "tokenizer_sha256",
        "tokenizer_info",
        "extra_columns",
        "staging_dir",
        "progress_file",
        "expected_inputs",
        "commit_in_pipeline",
    }
    assert Config().image_options().size == 896 and Config(image_size=448).image_options().size == 448


def test_load_options_rebuilds_the_run_for_serving(tmp_path, demo_model_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    write_series(str(tmp_path / "ct"), 12, series=1, patient=1)
    (tmp_path / "i.jsonl").write_text(json.dumps({"image": "a.png", "text": "t", "prompt": "Describe."}) + "\n")
    (tmp_path / "v.jsonl").write_text(json.dumps({"image": "ct", "text": "t", "prompt": "Findings?"}) + "\n")
    common = [
        "--tokenizer",
        demo_model_path,
        "--image_size",
        "448",
        "--png_level",
        "3",
        "--system_prompt",
        "You are an expert radiologist.",
    ]
    run_pipeline("images", ["--input", str(tmp_path / "i.jsonl"), "--output_dir", str(tmp_path / "oi"), *common])
    run_pipeline(
        "volumes",
        [
            "--input",
            str(tmp_path / "v.jsonl"),
            "--output_dir",
            str(tmp_path / "ov"),
            *common,
            "--ct_preset",
            "medgemma-1",
            "--max_slices",
            "5",
        ],
    )
    opts = load_options(str(tmp_path / "oi"))
    assert opts.image.size == 448 and opts.image.png_level == 3
    (rec,) = read_records(str(tmp_path / "oi" / "parquet"))
    p = prepare_image(str(tmp_path / "a.png"), prompt="Describe.", options=opts)
    assert p.encoded == rec["images"] and p.images[0].size == (448, 448)
    assert p.messages[0] == {"role": "system", "content": [{"type": "text", "text": "You are an expert radiologist."}]}
    vopts = load_options(str(tmp_path / "ov" / "summary.json"))
    assert vopts.volume.max_slices == 5 and vopts.volume.image.render.ct_windows[0].low == -100 - 2250 / 2
    (vrec,) = read_records(str(tmp_path / "ov" / "parquet"))
    s = prepare_series(str(tmp_path / "ct"), prompt="Findings?", options=vopts)
    assert s.encoded == vrec["images"] and len(s.encoded) == 5
    # default options would not have matched: the test can fail
    assert prepare_image(str(tmp_path / "a.png")).encoded != rec["images"]


def test_a_modality_is_one_registry_line(tmp_path, monkeypatch):
    """A modality profile added to the table is used for that modality, and only for it."""
    import pydicom
    from pydicom.data import get_testdata_file

    from medprep.transforms import dicom_render as dr

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    before = dr.render_dataset(ds)
    assert before.info["intensity"] == "minmax"

    def constant(ds, stored, options):
        return np.full(stored.values.shape, 7, np.uint8), "seven"

    monkeypatch.setitem(dr.MODALITY_PROFILES, "MR", dr.ModalityProfile(constant))
    after = dr.render_dataset(ds)
    assert after.info["intensity"] == "seven" and int(np.asarray(after.pixels).max()) == 7
    ct = dr.render_dataset(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert ct.info["intensity"] == "ct_windows [-1024,1024] [-135,215] [0,80]"


def test_output_formats_are_a_table():
    from medprep.pipelines.io.sinks import FORMATS

    assert {name: (f.folder, f.suffix) for name, f in FORMATS.items()} == {
        "arrayrecord": ("arrayrecord", ".array_record"),
        "parquet": ("parquet", ".parquet"),
    }


def test_public_api_names_resolve():
    import medprep

    assert sorted(medprep.__all__) == sorted(medprep._API)
    for name in medprep.__all__:
        assert getattr(medprep, name).__name__ == name


def test_missing_output_dir_is_named(tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": "t"}) + "\n")
    for name in ("images", "slides"):
        assert main([name, "--input", str(tmp_path / "m.jsonl")]) == 2
        assert "--output_dir: required: the output folder, local or gs://" in capsys.readouterr().err
