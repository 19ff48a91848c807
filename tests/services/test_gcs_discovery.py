"""Discovery on a gs:// prefix against a local GCS emulator: the prefix is listed level by level with the
delimiter (down through single sub-folder levels), and the rows, their numbers and texts are exactly those
of the same folder on disk, with gs:// references."""

import dataclasses
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from gcs_emulator import upload_folder  # tests/gcs_emulator.py
from medprep.pipelines.config import Config
from medprep.pipelines.io.discovery import DiscoverRows, ListingUnit, listing_units
from medprep.samples import write_series

BUCKET = "medprep-discovery"
GS = f"gs://{BUCKET}/in"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """in/cohort/2024/ holding 4 series folders (two studies, one with an accession number) and one series'
    files; in/cohort/README.txt; reports by study UID, by accession number, and one matching nothing."""
    root = tmp_path_factory.mktemp("gcsdisc") / "in"
    year = root / "cohort" / "2024"
    for s in range(5):
        folder = year if s == 4 else year / f"series{s}"
        extra = {"StudyInstanceUID": f"1.2.3.{s % 3}", "AccessionNumber": "ACC1" if s % 3 == 1 else ""}
        write_series(str(folder), 2, series=s, patient=s % 3, values=lambda k: np.full((4, 4), k), extra=extra)
    (root / "cohort" / "README.txt").write_text("not dicom")
    reports = [
        {"study_uid": "1.2.3.0", "text": "Study zero by UID."},
        {"accession_number": "ACC1", "text": "Study one by accession.", "prompt": "Describe."},
        {"study_uid": "9.9", "text": "Matches nothing."},
    ]  # study 1.2.3.2 (series 2) has no report: empty text
    (root / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    return str(root)


@pytest.fixture(scope="module")
def gcs(local):
    from gcs_emulator import emulator_bucket

    with emulator_bucket(BUCKET) as bucket:
        upload_folder(bucket, local, "in")
        yield bucket


def _on_gcs(value, local: str):
    """A local path (in a unit, a row) as its gs:// twin."""
    if isinstance(value, str):
        return value.replace(local, GS)
    if isinstance(value, (list, tuple)):
        return type(value)(_on_gcs(v, local) for v in value)
    if isinstance(value, ListingUnit):
        return ListingUnit(_on_gcs(value.start, local), _on_gcs(value.folder, local), _on_gcs(value.files, local))
    return {k: _on_gcs(v, local) if k == "images" else v for k, v in value.items()}


def _rows(config: Config, per_series: bool, out) -> list[dict]:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | DiscoverRows(config, per_series) | beam.Map(json.dumps) | beam.io.WriteToText(str(out / "rows"))
    lines = [line for f in sorted(out.glob("rows*")) for line in f.read_text().splitlines()]
    return sorted((json.loads(line) for line in lines), key=lambda r: r["row"])


def test_a_gs_prefix_is_listed_by_level_down_to_the_fan_out(gcs, local):
    units = listing_units(GS)
    assert units == [_on_gcs(u, local) for u in listing_units(local)]
    year = GS + "/cohort/2024"
    assert [u.folder for u in units if u.folder] == [f"{year}/series{s}" for s in range(4)]
    assert [len(u.files) for u in units if u.files] == [2, 1, 1]  # series 4's files, README.txt, reports.jsonl


def test_a_bucket_root_is_listed_too(gcs, local):
    """gs://bucket/ holds only in/: listed from the root (no empty leading '/' in the listing prefix), it
    descends into in/ and gives in/'s units."""
    assert listing_units(f"gs://{BUCKET}") == listing_units(GS)


@pytest.mark.parametrize("per_series", [True, False])
def test_gs_discovery_rows_are_the_local_rows(gcs, local, tmp_path, per_series):
    on_disk = dataclasses.replace(Config(), input=local + "/", reports=local + "/reports.jsonl")
    expected = _rows(on_disk, per_series, tmp_path / "local")
    on_gcs = dataclasses.replace(Config(), input=GS + "/", reports=GS + "/reports.jsonl")
    rows = _rows(on_gcs, per_series, tmp_path / "gcs")
    assert rows == [_on_gcs(r, local) for r in expected]
    assert len(rows) == (5 if per_series else 10) and all(r["images"][0].startswith(GS + "/") for r in rows)
    texts = sorted(r["text"] for r in rows)
    per_study = 1 if per_series else 2
    assert texts == sorted(
        ["Study zero by UID."] * 2 * per_study + ["Study one by accession."] * 2 * per_study + [""] * per_study
    )


def test_medprep_volumes_on_a_gs_prefix(gcs, local, tmp_path, demo_model_path):
    from medprep.pipelines.cli.main import run_pipeline

    args = ["--tokenizer", demo_model_path, "--max_slices", "2", "--split_salt", "s", "--max_error_fraction", "1"]
    out = tmp_path / "out"
    summary = run_pipeline(
        "volumes", ["--input", GS + "/", "--reports", GS + "/reports.jsonl", "--output_dir", str(out), *args]
    )
    # the series without a report is an error line (a volume example needs its text), the others examples
    assert (summary["inputs"], summary["examples"], summary["errors"]) == (5, 4, 1)
    tables = [pq.read_table(out / "parquet" / f) for f in sorted(os.listdir(out / "parquet"))]
    texts = sorted(t for table in tables for t in table["text"].to_pylist())
    assert texts == sorted(["Study zero by UID."] * 2 + ["Study one by accession."] * 2)
    errors = [json.loads(x) for f in sorted(os.listdir(out / "errors")) for x in open(out / "errors" / f)]
    assert [(e["stage"], e["message"]) for e in errors] == [("text", "empty text: a volume example needs its report")]
