"""Privacy (burned-in annotation, report scrubbing, identifier scan) and `medprep verify` catching damage."""

import json
import os
import shutil

import numpy as np
import pytest

from medprep.pipelines.cli.main import main, run_pipeline
from medprep.pipelines.records.identifiers import IDENTIFIER_HIT
from medprep.pipelines.tools.verify import verify
from medprep.samples import fake_identity, write_dicom, write_series
from medprep.transforms.scrub import scrub_text


def test_scrub_text_replaces_identifiers_dates_and_ids():
    text = (
        "Jane Doe (MRN: AB12345) seen on 2021-03-04 and 4 March 2021; accession # 99-1234. "
        "Compared with 03/05/2020. Call 5551234567. Image 45 of series 3 is unchanged."
    )
    clean, counts = scrub_text(text, identifiers=["AB12345"], names=["DOE^JANE"])
    assert clean == (
        "[NAME] [NAME] (MRN: [ID]) seen on [DATE] and [DATE]; accession # [ID]. "
        "Compared with [DATE]. Call [PHONE]. Image 45 of series 3 is unchanged."
    )
    assert counts == {"name": 2, "id": 2, "ssn": 0, "phone": 1, "email": 0, "address": 0, "date": 3}
    assert scrub_text("", ["x"]) == ("", dict.fromkeys(counts, 0))


@pytest.fixture()
def phi_inputs(tmp_path):
    ident = fake_identity(1)
    ok = write_dicom(str(tmp_path / "ok.dcm"), np.full((16, 16), 500, np.uint16), patient=1, window=(500, 1000))
    burned = write_dicom(
        str(tmp_path / "burned.dcm"), np.full((16, 16), 500, np.uint16), patient=1, extra={"BurnedInAnnotation": "YES"}
    )
    rows = [
        {
            "id": "leaky",
            "image": ok,
            "text": f"Patient {ident['PatientName'].replace('^', ' ')} MRN {ident['PatientID']}, "
            f"DOB 1970-01-01: clear lungs.",
        },
        {"id": "burned", "image": burned, "text": "burned-in text"},
        {"id": "clean", "image": ok, "text": "Clear lungs, no effusion."},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(m), ident


BUDGET = ["--max_error_fraction", "1"]  # inputs refused on purpose


def test_a_record_carrying_its_own_header_identifier_is_refused_by_the_pipeline(phi_inputs, tmp_path):
    """The pipeline checks each record against its own headers where it reads them: the leaky report becomes
    one privacy error line (naming keywords and fields, never a value), summary.json counts it, verify passes
    without opening a source; an identifier planted afterwards is still caught by verify's patterns."""
    manifest, ident = phi_inputs
    out = str(tmp_path / "o")
    s = run_pipeline("images", ["--input", manifest, "--output_dir", out, *BUDGET])
    assert (s["examples"], s["errors_by_stage"]) == (1, {"privacy": 2})
    assert (s["identifier_hits"], s["records_checked_for_identifiers"]) == (1, 1)
    lines = [json.loads(x) for x in open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl"))]
    (hit,) = [e for e in lines if e["message"].startswith(IDENTIFIER_HIT)]
    assert hit["row"] == 1 and hit["message"].startswith(
        "identifier in record: the record would carry its own PatientID in field text, PatientName in field text"
    )
    assert not [e for e in lines if ident["PatientID"] in json.dumps(e) or "JANE001" in json.dumps(e)]
    problems, facts = verify(out)
    assert problems == [] and (facts["identifier_hits"], facts["records_checked_for_identifiers"]) == (1, 1)
    assert main(["verify", out]) == 0
    from medprep.schemas import read_records

    for fmt in ("parquet", "arrayrecord"):
        (rec,) = read_records(os.path.join(out, fmt))
        assert rec["text"] == "Clear lungs, no effusion."
    _rewrite_text(out, f"Seen by {ident['PatientName']} today.")
    eid = rec["example_id"]
    assert verify(out)[0] == [f"identifier pattern 'DICOM person name' found in record {eid} field text"]
    assert main(["verify", out]) == 1


def _rewrite_text(out: str, text: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.join(out, "parquet")
    for name in os.listdir(folder):
        table = pq.read_table(os.path.join(folder, name))
        rows = [dict(row, text=text) for row in table.to_pylist()]
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), os.path.join(folder, name))


def test_verify_checks_the_pipelines_identifier_figures_in_summary(phi_inputs, tmp_path):
    manifest, _ = phi_inputs
    out = str(tmp_path / "o")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, *BUDGET])
    path = os.path.join(out, "summary.json")
    s = json.load(open(path))

    def verify_with(**changes):
        json.dump({k: v for k, v in dict(s, **changes).items() if v is not None}, open(path, "w"))
        return verify(out)[0]

    assert verify_with() == []
    assert verify_with(records_checked_for_identifiers=0) == [
        "1 record(s) not checked against their own headers: summary.json counts 0 checked of 1 examples"
    ]
    assert verify_with(identifier_hits=0) == ["summary.json counts 0 identifier hit(s), errors/ holds 1 such line(s)"]
    assert verify_with(records_checked_for_identifiers=None) == [
        "summary.json does not say that the run checked its records against their own headers "
        "(records_checked_for_identifiers): made by an older medprep; rerun it, or pass --no_phi_scan"
    ]
    assert verify(out, phi_scan=False)[0] == []


def test_scrub_text_makes_the_output_verify(phi_inputs, tmp_path):
    manifest, ident = phi_inputs
    out = str(tmp_path / "o")
    s = run_pipeline("images", ["--input", manifest, "--output_dir", out, "--scrub_text", "--allow_burned_in"])
    assert s["examples"] == 3 and s["scrubbed"] == {"date": 1, "id": 1, "name": 2} and s["identifier_hits"] == 0
    problems, _ = verify(out)
    assert problems == []
    from medprep.schemas import read_records

    texts = sorted(r["text"] for r in read_records(os.path.join(out, "parquet")))
    assert texts[1] == "Patient [NAME] [NAME] MRN [ID], DOB [DATE]: clear lungs."


def test_volume_series_with_burned_in_is_a_privacy_error(tmp_path):
    write_series(str(tmp_path / "s"), 4, extra={"BurnedInAnnotation": "YES"})
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": str(tmp_path / "s"), "text": "ct"}) + "\n")
    s = run_pipeline("volumes", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), *BUDGET])
    assert s["errors_by_stage"] == {"privacy": 1}


@pytest.fixture()
def good_output(tmp_path):
    from medprep.samples import make_images_samples

    manifest = make_images_samples(str(tmp_path / "samples"))
    out = str(tmp_path / "out")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, "--num_shards", "2", *BUDGET])
    assert verify(out)[0] == []
    return out


def test_verify_catches_a_missing_shard(good_output):
    os.remove(os.path.join(good_output, "parquet", "train-00001-of-00002.parquet"))
    assert any("missing shard parquet/train-00001" in p for p in verify(good_output)[0])


def test_verify_catches_a_truncated_shard(good_output):
    path = os.path.join(good_output, "parquet", "train-00000-of-00002.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert any("cannot read" in p for p in verify(good_output)[0])


def test_verify_catches_a_summary_that_does_not_reconcile(good_output):
    path = os.path.join(good_output, "summary.json")
    s = json.load(open(path))
    s["inputs"] += 1
    json.dump(s, open(path, "w"))
    assert any("does not reconcile" in p for p in verify(good_output)[0])


def test_verify_catches_lost_error_lines_and_an_incomplete_run(good_output):
    path = os.path.join(good_output, "errors", "errors-00000-of-00001.jsonl")
    first = open(path).readline()
    open(path, "w").write(first)
    assert any("errors/ holds 1 lines" in p for p in verify(good_output)[0])
    os.remove(os.path.join(good_output, "summary.json"))
    assert verify(good_output)[0] == [f"no summary.json in {good_output}: the run did not complete"]


def test_verify_catches_formats_that_disagree(good_output, tmp_path):
    shutil.copy(
        os.path.join(good_output, "arrayrecord", "train-00000-of-00002.array_record"),
        os.path.join(good_output, "arrayrecord", "train-00001-of-00002.array_record"),
    )
    problems = verify(good_output)[0]
    assert any("duplicate example_id" in p for p in problems)
