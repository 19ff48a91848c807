"""DICOMweb against a real Orthanc with its DICOMweb plugin (Debian packages), started by the tests."""

import glob
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import orthanc  # tests/orthanc.py
from medprep.pipelines.cli.main import run_pipeline
from medprep.pipelines.cli.options import OptionError
from medprep.pipelines.io.run_output import ErrorBudgetExceeded
from medprep.pipelines.io.sources.dicomweb import client_for
from medprep.samples import make_images_samples, write_series
from medprep.schemas import read_records
from medprep.transforms.dicomweb_ref import DicomWebRef, parse_ref
from medprep.transforms.errors import ItemError

pytestmark = pytest.mark.skipif(
    not orthanc.available() and os.environ.get("MEDPREP_REQUIRE_ORTHANC") != "1",
    reason="Orthanc + DICOMweb plugin not installed (apt-get install orthanc orthanc-dicomweb)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = orthanc.OrthancServer(str(tmp_path_factory.mktemp("orthanc")))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def loaded(server, tmp_path_factory):
    """2D samples and a CT series uploaded; manifests for local and DICOMweb references."""
    d = tmp_path_factory.mktemp("dw")
    manifest = make_images_samples(str(d / "samples"))
    series = write_series(str(d / "ct"), 20, series=5, patient=9)
    local_rows, web_rows, uploaded = [], [], {}
    for row in (json.loads(line) for line in open(manifest)):
        if not row["image"].endswith(".dcm") or "does_not_exist" in row["image"] or "truncated" in row["image"]:
            continue
        # Orthanc keeps the first of two files sharing a SOPInstanceUID (MR_small and its JPEG 2000 copy)
        sop = str(pydicom.dcmread(row["image"], stop_before_pixels=True).SOPInstanceUID)
        if uploaded.setdefault(sop, row["image"]) != row["image"]:
            continue
        refs = {}
        for key in ("image", "prior"):
            if row.get(key):
                ds = pydicom.dcmread(row[key], stop_before_pixels=True)
                server.upload(row[key])
                refs[key] = (
                    f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}"
                )
        local_rows.append(row)
        web_rows.append({**row, **refs})
    for p in series:
        server.upload(p)
    ds = pydicom.dcmread(series[0], stop_before_pixels=True)
    series_url = f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    (d / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in local_rows))
    (d / "web.jsonl").write_text("".join(json.dumps(r) + "\n" for r in web_rows))
    (d / "vol_local.jsonl").write_text(json.dumps({"id": "ct", "image": str(d / "ct"), "text": "CT"}) + "\n")
    (d / "vol_web.jsonl").write_text(json.dumps({"id": "ct", "image": series_url, "text": "CT"}) + "\n")
    return d, series_url


def _by_id(out):
    return {r["example_id"]: r for r in read_records(os.path.join(out, "arrayrecord"))}


def _same_but_source(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        ra, rb = dict(a[k]), dict(b[k])
        for r in (ra, rb):
            r.pop("source")
            r["image_info"] = [{x: v for x, v in json.loads(i).items() if x != "source"} for i in r["image_info"]]
        assert ra == rb


def test_parse_refs():
    r = parse_ref("https://h/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb/studies/1.2/series/3.4")
    assert (r.base, r.study, r.series, r.instance) == (
        "https://h/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb",
        "1.2",
        "3.4",
        None,
    )
    assert parse_ref("/local/path.dcm") is None and parse_ref("gs://b/x.dcm") is None


def test_images_from_dicomweb_equal_local(loaded, tmp_path):
    d, _ = loaded
    s_local = run_pipeline("images", ["--input", str(d / "local.jsonl"), "--output_dir", str(tmp_path / "l")])
    s_web = run_pipeline("images", ["--input", str(d / "web.jsonl"), "--output_dir", str(tmp_path / "w")])
    assert s_web["examples"] == s_local["examples"] == 7 and s_web["errors"] == 0
    _same_but_source(_by_id(str(tmp_path / "l")), _by_id(str(tmp_path / "w")))


def test_volume_from_dicomweb_series_equal_local(loaded, tmp_path):
    d, series_url = loaded
    run_pipeline(
        "volumes",
        [
            "--input",
            str(d / "vol_local.jsonl"),
            "--output_dir",
            str(tmp_path / "l"),
            "--max_slices",
            "6",
            "--keep_source",
        ],
    )
    run_pipeline(
        "volumes",
        [
            "--input",
            str(d / "vol_web.jsonl"),
            "--output_dir",
            str(tmp_path / "w"),
            "--max_slices",
            "6",
            "--keep_source",
        ],
    )
    web = _by_id(str(tmp_path / "w"))
    _same_but_source(_by_id(str(tmp_path / "l")), web)
    assert all(s.startswith(series_url + "/instances/") for r in web.values() for s in r["source"])


def test_qido_search_finds_exactly_the_series(loaded, server):
    client = client_for(server.dicomweb)
    series = client.search("series", {"Modality": "CT", "SeriesNumber": "5"})
    assert len(series) == 1
    ref = parse_ref(loaded[1])
    assert len(client.search_instances(ref)) == 20


def test_transient_503s_are_retried(loaded, server, tmp_path, monkeypatch):
    d, _ = loaded
    proxy = orthanc.FaultProxy(server.url, fail_first=4)  # fewer than the 6 attempts
    monkeypatch.setenv("MEDPREP_DICOMWEB_BASE_DELAY", "0.05")
    try:
        text = (d / "web.jsonl").read_text().replace(server.url, proxy.url)
        (tmp_path / "m.jsonl").write_text(text)
        s = run_pipeline("images", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o")])
    finally:
        proxy.stop()
    assert (s["examples"], s["errors"]) == (7, 0) and proxy.failed == 4
    from medprep.pipelines.io.sources.dicomweb import retries_so_far

    # counted (and exported as the Beam counter PrepareImageRow/dicomweb_retries); the start-up reachability
    # check met one of the 4 failures
    assert retries_so_far() >= 3


def test_a_server_that_keeps_failing_becomes_error_lines(loaded, server, tmp_path, monkeypatch):
    d, _ = loaded
    proxy = orthanc.FaultProxy(server.url, fail_all=True)
    monkeypatch.setenv("MEDPREP_DICOMWEB_BASE_DELAY", "0.01")
    monkeypatch.setenv("MEDPREP_DICOMWEB_ATTEMPTS", "3")
    try:
        (tmp_path / "m.jsonl").write_text((d / "web.jsonl").read_text().replace(server.url, proxy.url))
        s = run_pipeline(
            "images",
            ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), "--max_error_fraction", "1"],
        )
        # without --max_error_fraction 1 the same run commits nothing (exit 3)
        with pytest.raises(ErrorBudgetExceeded, match="all 7 inputs failed"):
            run_pipeline("images", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o2")])
    finally:
        proxy.stop()
    assert (s["examples"], s["errors"], s["reconciled"]) == (0, 7, True)
    lines = [json.loads(x) for x in open(tmp_path / "o" / "errors" / "errors-00000-of-00001.jsonl")]
    assert all(e["stage"] == "read" and "failed after 3 attempts (HTTP 503)" in e["message"] for e in lines)


def test_missing_instance_and_stopped_server(loaded, tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    d, series_url = loaded
    (tmp_path / "gone.jsonl").write_text(json.dumps({"image": series_url + "/instances/1.2.3.999", "text": "x"}) + "\n")
    s = run_pipeline(
        "images",
        ["--input", str(tmp_path / "gone.jsonl"), "--output_dir", str(tmp_path / "o1"), "--max_error_fraction", "1"],
    )
    assert s["errors_by_stage"] == {"read": 1}
    dead = orthanc.free_port()
    (tmp_path / "dead.jsonl").write_text(
        (d / "web.jsonl").read_text().replace(series_url.split("/dicom-web")[0], f"http://127.0.0.1:{dead}")
    )
    # a manifest naming a service that is down is refused at start-up, in one line, before any work
    code = main(["images", "--input", str(tmp_path / "dead.jsonl"), "--output_dir", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"medprep: error: --input: the manifest's DICOMweb service http://127.0.0.1:{dead}/dicom-web: "
        "connection refused"
    )
    assert not (tmp_path / "o2").exists() or not os.listdir(tmp_path / "o2")


def test_basic_auth(tmp_path, monkeypatch):
    secured = orthanc.OrthancServer(str(tmp_path), users={"alice": "s3cret"})
    try:
        path = get_testdata_file("CT_small.dcm")
        secured.upload(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ref = DicomWebRef(secured.dicomweb, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        (tmp_path / "m.jsonl").write_text(json.dumps({"image": ref.url(), "text": "ct"}) + "\n")
        with pytest.raises(OptionError) as refused:  # no credentials: HTTP 401 at start-up, nothing run
            run_pipeline("images", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o1")])
        assert str(refused.value) == (
            f"medprep: error: --input: the manifest's DICOMweb service {secured.dicomweb}: "
            "HTTP 401: the server refused the credentials (check the user/password or token)"
        )
        monkeypatch.setenv("MEDPREP_DICOMWEB_USER", "alice")
        monkeypatch.setenv("MEDPREP_DICOMWEB_PASSWORD", "s3cret")
        import medprep.pipelines.io.sources.dicomweb as dw

        dw._clients.clear()
        s = run_pipeline("images", ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o2")])
        assert (s["examples"], s["errors"]) == (1, 0)
        got = next(iter(_by_id(str(tmp_path / "o2")).values()))["images"][0]
        from medprep.transforms.image import prepare_image

        assert got == prepare_image(path).encoded[0] and np.any(got)
    finally:
        secured.stop()


def test_credentials_in_urls_never_reach_an_output(tmp_path):
    """user:password in a DICOMweb URL authenticates, and is in no record, error line or summary.json."""
    secured = orthanc.OrthancServer(str(tmp_path), users={"alice": "S3CRETpw"})
    try:
        path = get_testdata_file("CT_small.dcm")
        secured.upload(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        base = secured.dicomweb.replace("http://", "http://alice:S3CRETpw@")
        good = DicomWebRef(base, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        missing = DicomWebRef(base, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), "1.2.3.4")
        rows = [{"image": good.url(), "text": "ct", "id": "a"}, {"image": missing.url(), "text": "gone", "id": "b"}]
        (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for keep in ([], ["--keep_source"]):
            out = tmp_path / f"o{len(keep)}"
            args = ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(out), "--max_error_fraction", "1"]
            s = run_pipeline("images", [*args, *keep])
            assert (s["examples"], s["errors"]) == (1, 1)
            blobs = b"".join(
                open(f, "rb").read() for f in glob.glob(str(out / "**" / "*"), recursive=True) if os.path.isfile(f)
            )
            assert b"S3CRETpw" not in blobs and b"alice" not in blobs
        rec = next(iter(_by_id(str(tmp_path / "o1")).values()))
        assert rec["source"] == [good.url().replace("alice:S3CRETpw@", "")]
        line = json.loads(open(tmp_path / "o1" / "errors" / "errors-00000-of-00001.jsonl").read())
        assert line["ref"] == missing.url().replace("alice:S3CRETpw@", "") and "not found" in line["message"]
    finally:
        secured.stop()


def _study_of(path):
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_discovery_of_series_with_reports_joined(loaded, server, tmp_path):
    d, series_url = loaded
    ct_study = series_url.split("/studies/")[1].split("/")[0]
    (tmp_path / "reports.csv").write_text(f"study_uid,text\n{ct_study},Discovered CT: no acute findings.\n")
    s = run_pipeline(
        "volumes",
        [
            "--dicomweb_url",
            server.dicomweb,
            "--query",
            "Modality=CT",
            "--reports",
            str(tmp_path / "reports.csv"),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_slices",
            "4",
            "--keep_source",
            "--max_error_fraction",
            "1",
        ],
    )
    # two CT series on the server: the 20-slice phantom and CT_small (a single slice: an error line)
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (2, 1, 1, True)
    rec = next(iter(_by_id(str(tmp_path / "o")).values()))
    assert rec["text"] == "Discovered CT: no acute findings." and len(rec["images"]) == 4
    assert all(src.startswith(series_url) for src in rec["source"])


def test_discovery_of_instances_by_accession(loaded, server, tmp_path):
    d, _ = loaded
    current = str(d / "samples" / "cxr_p1_current.dcm")
    acc = str(pydicom.dcmread(current, stop_before_pixels=True).AccessionNumber)
    (tmp_path / "reports.jsonl").write_text(json.dumps({"accession_number": acc, "text": "Nodule."}) + "\n")
    s = run_pipeline(
        "images",
        [
            "--dicomweb_url",
            server.dicomweb,
            "--query",
            "Modality=DX",
            "--reports",
            str(tmp_path / "reports.jsonl"),
            "--output_dir",
            str(tmp_path / "o"),
        ],
    )
    # the DX current and prior instances (the generator gives both of patient 1's studies one accession)
    assert (s["inputs"], s["examples"], s["errors"]) == (2, 2, 0)
    assert {r["text"] for r in _by_id(str(tmp_path / "o")).values()} == {"Nodule."}


def test_discovery_in_a_folder(tmp_path):
    write_series(str(tmp_path / "in" / "a"), 6, series=1, patient=3)
    write_series(
        str(tmp_path / "in" / "b"), 5, series=2, patient=4, modality="MR", values=lambda k: np.full((8, 8), k, np.int16)
    )
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    study = _study_of(str(next((tmp_path / "in" / "a").iterdir())))
    (tmp_path / "r.csv").write_text(f"study_uid,text\n{study},CT report\n")
    s = run_pipeline(
        "volumes",
        [
            "--input",
            str(tmp_path / "in") + "/",
            "--reports",
            str(tmp_path / "r.csv"),
            "--output_dir",
            str(tmp_path / "o"),
            "--max_error_fraction",
            "1",
        ],
    )
    assert (s["inputs"], s["examples"], s["errors_by_stage"]) == (2, 1, {"text": 1})  # MR has no report
    assert s["by_modality"] == {"CT": 1}


def test_a_series_that_disappears_after_discovery(loaded, server, tmp_path):
    d, series_url = loaded
    gone = series_url.split("/series/")[1]
    proxy = orthanc.FaultProxy(server.url, missing=f"/series/{gone}/")
    (tmp_path / "r.csv").write_text("study_uid,text\n1.2.3,unrelated report\n")
    try:
        s = run_pipeline(
            "volumes",
            [
                "--dicomweb_url",
                proxy.url + "/dicom-web",
                "--query",
                "Modality=CT",
                "--reports",
                str(tmp_path / "r.csv"),
                "--output_dir",
                str(tmp_path / "o"),
                "--max_error_fraction",
                "1",
            ],
        )
    finally:
        proxy.stop()
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (2, 0, 2, True)
    lines = [json.loads(x) for x in open(tmp_path / "o" / "errors" / "errors-00000-of-00001.jsonl")]
    assert any("not found on the DICOMweb server" in e["message"] for e in lines)


def test_discovery_options_fail_at_startup(tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    assert main(["volumes", "--output_dir", str(tmp_path / "o")]) == 2
    assert "--input/--dicomweb_url" in capsys.readouterr().err
    assert main(["volumes", "--dicomweb_url", "ftp://x", "--output_dir", str(tmp_path / "o")]) == 2
    assert "--dicomweb_url" in capsys.readouterr().err
    assert (
        main(
            [
                "volumes",
                "--dicomweb_url",
                "http://127.0.0.1:1/dicom-web",
                "--query",
                "Modality",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "--query" in capsys.readouterr().err


def test_an_instance_over_max_input_bytes_is_refused_while_streaming(loaded, server, tmp_path):
    """The DICOMweb body is read in chunks and dropped at the limit (Orthanc's multipart answer)."""
    d, series_url = loaded
    first = client_for(server.dicomweb).search_instances(parse_ref(series_url))[0]
    data = client_for(server.dicomweb).retrieve_instance(first, 10 << 20)
    assert data[128:132] == b"DICM"
    with pytest.raises(ItemError, match=r"above --max_input_bytes \(4,096\)|more than --max_input_bytes \(4,096\)"):
        client_for(server.dicomweb).retrieve_instance(first, 4096)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": first.url(), "text": "ct"}) + "\n")
    s = run_pipeline(
        "images",
        ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), "--max_input_bytes", "4K"]
        + ["--max_error_fraction", "1"],
    )
    assert (s["errors"], s["errors_by_stage"]) == (1, {"read": 1})


def test_discovery_against_a_server_that_is_down_is_one_line(tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    (tmp_path / "r.csv").write_text("study_uid,text\n1.2.3,report\n")
    url = f"http://127.0.0.1:{orthanc.free_port()}/dicom-web"
    code = main(["images", "--dicomweb_url", url, "--reports", str(tmp_path / "r.csv"), "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"medprep: error: --dicomweb_url: {url}: connection refused"
    assert not [line for line in err if "Traceback" in line]
