"""transforms/dicom_io.py: one DICOM reader and one error model for the inference API and the pipelines;
the header identifier keywords defined once (scrubbing collects every one verify checks)."""

import json
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import write_dicom, write_series
from medprep.schemas import read_records
from medprep.transforms.dicom_io import (
    ID_KEYWORDS,
    IDENTIFIER_KEYWORDS,
    NAME_KEYWORDS,
    PHI_KEYWORDS,
    header_identifiers,
    image_header,
    read_dataset,
    read_header,
)
from medprep.transforms.errors import ItemError
from medprep.transforms.volume import VolumeOptions, prepare_series

TRUNCATED_PIXELS = (
    "cannot decode pixel data (Explicit VR Little Endian): ValueError: The number of bytes of pixel "
    "data is less than expected (8130 vs 8192 bytes)"
)


def _cut_in_header(path: str, dest: str) -> str:
    """A copy of a DICOM file cut 8 bytes into its pixel data element's header: unreadable by pydicom."""
    data = open(path, "rb").read()
    with open(dest, "wb") as fh:
        fh.write(data[: data.find(b"\xe0\x7f\x10\x00") + 8])
    return dest


def test_unreadable_bytes_are_one_decode_error(tmp_path):
    cut = _cut_in_header(write_series(str(tmp_path / "s"), 1)[0], str(tmp_path / "cut.dcm"))
    with pytest.raises(ItemError) as err:
        read_dataset(open(cut, "rb").read())
    assert (err.value.stage, err.value.message) == (
        "decode",
        "not a readable DICOM file: error: unpack requires a buffer of 4 bytes",
    )


def test_image_header_is_none_for_non_dicom_unreadable_and_non_image(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    with open(ct, "rb") as fh:
        ds = image_header(fh, ct)
    assert ds.Rows == 128 and "PixelData" not in ds  # the header only
    assert image_header(b"not a dicom file", "notes.txt") is None
    cut = _cut_in_header(write_series(str(tmp_path / "s"), 1)[0], str(tmp_path / "cut.dcm"))
    with pytest.raises(ItemError, match="^not a readable DICOM file: error: unpack requires a buffer of 4 bytes$"):
        read_header(open(cut, "rb").read())
    assert image_header(open(cut, "rb").read(), cut) is None
    report = pydicom.dcmread(ct)
    del report.Rows
    report.save_as(str(tmp_path / "report.dcm"))
    assert image_header(open(tmp_path / "report.dcm", "rb").read()) is None  # no image: not a slice


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """The same broken inputs through the volumes pipeline (one error line or one record each)."""
    d = tmp_path_factory.mktemp("broken")
    series = sorted(write_series(str(d / "series"), 3, series=1, patient=1))
    (d / "series" / "notes.txt").write_text("not a DICOM file")
    _cut_in_header(series[0], str(d / "series" / "cut.dcm"))
    truncated = shutil.copy(get_testdata_file("MR_truncated.dcm"), str(d / "MR_truncated.dcm"))
    inputs = {
        "truncated": [truncated],
        "not_dicom": [str(d / "series" / "notes.txt")],
        "with_junk": series + [str(d / "series" / "notes.txt"), str(d / "series" / "cut.dcm")],
    }
    rows = [{"id": k, "image": v, "text": "t"} for k, v in inputs.items()]
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    budget = ["--max_error_fraction", "1"]  # two of the three inputs fail on purpose
    s = run_pipeline(
        "volumes", ["--input", str(d / "m.jsonl"), "--output_dir", str(d / "out"), "--min_slices", "1", *budget]
    )
    errors = {json.loads(x)["row"]: json.loads(x) for x in open(d / "out" / "errors" / "errors-00000-of-00001.jsonl")}
    return inputs, s, errors, list(read_records(str(d / "out" / "parquet")))


def _api_failure(items) -> tuple[str, str]:
    with pytest.raises(ItemError) as err:
        prepare_series(items, options=VolumeOptions(min_slices=1))
    return err.value.stage, err.value.message


def test_same_broken_file_fails_the_same_way_in_api_and_pipeline(broken_run):
    inputs, s, errors, _ = broken_run
    assert (s["inputs"], s["examples"], s["errors"]) == (3, 1, 2)
    stage, message = _api_failure(inputs["truncated"])
    assert (errors[1]["stage"], errors[1]["message"]) == (stage, message)
    assert stage == "decode" and message.startswith(TRUNCATED_PIXELS)
    assert (errors[2]["stage"], errors[2]["message"]) == _api_failure(inputs["not_dicom"])
    assert _api_failure(inputs["not_dicom"]) == ("read", "no DICOM image series among 1 file(s)")


def test_unreadable_files_among_a_series_are_skipped_in_api_and_pipeline(broken_run):
    inputs, _, _, records = broken_run
    (record,) = records
    api = prepare_series(inputs["with_junk"], options=VolumeOptions(min_slices=1))
    assert record["images"] == api.encoded and len(api.encoded) == 3
    assert json.loads(record["image_info"][0])["series"]["files_skipped"] == 2  # notes.txt and cut.dcm


def test_identifier_keywords_are_defined_once_and_scrubbing_collects_what_verify_checks():
    from medprep.pipelines.records import example
    from medprep.pipelines.tools import verify

    assert verify.PHI_KEYWORDS is PHI_KEYWORDS and PHI_KEYWORDS == (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "InstitutionName",
        "OperatorsName",
        "ReferringPhysicianName",
        "OtherPatientIDs",
        "PerformingPhysicianName",
    )
    assert example.ID_KEYWORDS is ID_KEYWORDS and example.NAME_KEYWORDS is NAME_KEYWORDS
    assert sorted(ID_KEYWORDS + NAME_KEYWORDS) == sorted(PHI_KEYWORDS)
    assert NAME_KEYWORDS == ("PatientName", "OperatorsName", "ReferringPhysicianName", "PerformingPhysicianName")
    ids = header_identifiers(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert tuple(ids) == IDENTIFIER_KEYWORDS and set(PHI_KEYWORDS) <= set(ids)


def test_performing_physician_is_scrubbed_so_the_output_verifies(tmp_path):
    from medprep.pipelines.tools.verify import verify

    dcm = write_dicom(
        str(tmp_path / "x.dcm"),
        np.full((16, 16), 500, np.uint16),
        window=(500, 1000),
        extra={"PerformingPhysicianName": "ROE^RICHARD"},
    )
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": dcm, "text": "Richard Roe reviewed the film; no acute findings."}) + "\n"
    )
    out = str(tmp_path / "o")
    s = run_pipeline("images", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", out, "--scrub_text"])
    assert s["scrubbed"] == {"name": 2}
    (record,) = read_records(os.path.join(out, "parquet"))
    assert record["text"] == "[NAME] [NAME] reviewed the film; no acute findings."
    assert verify(out)[0] == []
