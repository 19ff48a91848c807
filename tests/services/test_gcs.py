"""gs:// end to end against a local GCS emulator (gcp-storage-emulator from PyPI), started by the fixture."""

import io
import json
import os
import shutil
import time

import numpy as np
import pytest

from gcs_emulator import upload_folder  # tests/gcs_emulator.py
from medprep.samples import make_images_samples

BUCKET = "medprep-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    from gcs_emulator import emulator_bucket

    with emulator_bucket(BUCKET) as bucket:
        yield bucket


@pytest.fixture(scope="module")
def relative_samples(tmp_path_factory, demo_model_bytes):
    """The 2D samples with a manifest whose references are relative to it, plus the tokenizer."""
    folder = str(tmp_path_factory.mktemp("rel"))
    manifest = make_images_samples(folder)
    rows = [json.loads(line) for line in open(manifest)]
    for r in rows:
        for key in ("image", "prior"):
            if r.get(key):
                r[key] = os.path.relpath(r[key], folder)
    with open(manifest, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    open(os.path.join(folder, "demo.model"), "wb").write(demo_model_bytes)
    return folder


def _download_shards(bucket, prefix: str) -> dict:
    out = {}
    for blob in bucket.list_blobs(prefix=prefix + "/"):
        rel = blob.name[len(prefix) + 1 :]
        if rel.split("/")[0] in ("arrayrecord", "parquet", "errors"):
            out[rel] = blob.download_as_bytes()
    return out


def _local_shards(folder: str) -> dict:
    out = {}
    for sub in ("arrayrecord", "parquet", "errors"):
        for f in sorted(os.listdir(os.path.join(folder, sub))):
            out[f"{sub}/{f}"] = open(os.path.join(folder, sub, f), "rb").read()
    return out


def _args(manifest, out, tokenizer, *extra):
    return [
        "--input",
        manifest,
        "--output_dir",
        out,
        "--tokenizer",
        tokenizer,
        "--split_salt",
        "s",
        "--val_fraction",
        "0.2",
        "--test_fraction",
        "0.2",
        "--max_error_fraction",
        "1",  # 2 of the 13 sample rows fail on purpose
        *extra,
    ]


def test_gcs_run_is_byte_identical_to_local(gcs, relative_samples, tmp_path):
    from medprep.pipelines.cli.main import run_pipeline

    local_out = str(tmp_path / "local")
    s_local = run_pipeline(
        "images",
        _args(
            os.path.join(relative_samples, "manifest.jsonl"), local_out, os.path.join(relative_samples, "demo.model")
        ),
    )
    upload_folder(gcs, relative_samples, "in")
    base = f"gs://{BUCKET}/in"
    s_gcs = run_pipeline("images", _args(f"{base}/manifest.jsonl", f"gs://{BUCKET}/out", f"{base}/demo.model"))
    assert (s_gcs["examples"], s_gcs["errors"]) == (s_local["examples"], s_local["errors"]) == (11, 2)
    remote, local = _download_shards(gcs, "out"), _local_shards(local_out)
    errors = "errors/errors-00000-of-00001.jsonl"
    # record shards byte for byte; error lines name the resolved path, which differs by location
    assert {k: v for k, v in remote.items() if k != errors} == {k: v for k, v in local.items() if k != errors}
    assert len(remote) >= 5

    def lines(data):
        return [{k: v for k, v in json.loads(x).items() if k != "message"} for x in data.splitlines()]

    assert lines(remote[errors]) == lines(local[errors]) and len(lines(local[errors])) == 2
    assert "gs://" in remote[errors].decode() and "gs://" not in local[errors].decode()
    names = {b.name for b in gcs.list_blobs(prefix="out/")}
    assert "out/summary.json" in names and "out/preview.png" in names
    assert not [n for n in names if ".staging" in n]


def test_gcs_multiprocessing_workers(gcs, relative_samples, tmp_path):
    """Worker processes reach the emulator too (the credential skip holds in every process)."""
    from medprep.pipelines.cli.main import run_pipeline

    upload_folder(gcs, relative_samples, "in2")
    base = f"gs://{BUCKET}/in2"
    t = time.time()
    s = run_pipeline(
        "images",
        _args(
            f"{base}/manifest.jsonl",
            f"gs://{BUCKET}/out-mp",
            f"{base}/demo.model",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--min_inputs_per_worker",
            "0",
        ),
    )
    assert s["examples"] == 11 and time.time() - t < 60


def test_verify_and_inspect_on_gcs_output(gcs, relative_samples):
    from medprep.pipelines.cli.main import main, run_pipeline
    from medprep.pipelines.tools.verify import verify

    upload_folder(gcs, relative_samples, "in3")
    base = f"gs://{BUCKET}/in3"
    run_pipeline("images", _args(f"{base}/manifest.jsonl", f"gs://{BUCKET}/out3", f"{base}/demo.model"))
    problems, facts = verify(f"gs://{BUCKET}/out3")
    assert problems == [] and facts["phi_values_checked"] > 5  # relative sources resolved and scanned on gs://
    assert main(["inspect", f"gs://{BUCKET}/out3"]) == 0
    page = gcs.blob("out3/report.html").download_as_bytes().decode()
    assert 'id="count-examples">11<' in page


def test_gcs_rerun_refused_then_overwritten(gcs, relative_samples, capsys):
    from medprep.pipelines.cli.main import main

    upload_folder(gcs, relative_samples, "in4")
    base = f"gs://{BUCKET}/in4"
    args = ["images", *_args(f"{base}/manifest.jsonl", f"gs://{BUCKET}/out4", f"{base}/demo.model")]
    assert main(args + ["--num_shards", "2"]) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    names = sorted(b.name for b in gcs.list_blobs(prefix="out4/"))
    assert not [n for n in names if "of-00002" in n or ".staging" in n]


def test_slides_from_gcs_file_and_dicom_wsi_prefix(gcs, tmp_path):
    """An SVS object and a DICOM WSI folder under a gs:// prefix give the same patches as local files."""
    from medprep.pipelines.cli.main import run_pipeline
    from medprep.samples import synthetic_slide_rgb, write_svs
    from medprep.schemas import read_records

    svs = write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(4096, 4096, seed=4), mpp=0.25)
    folders = {"svs": svs}
    if shutil.which("OrthancWSIDicomizer"):
        from test_dicom_wsi import dicomize

        folders["dicom"] = dicomize(svs, str(tmp_path / "dicom"), 0.25)
    upload_folder(gcs, str(tmp_path), "wsi")
    opts = ["--patch_size", "112", "--stride", "112", "--image_size", "112", "--max_patches", "6"]
    images = {}
    for name, local in folders.items():
        rel = os.path.relpath(local, str(tmp_path))
        for where, ref in (("local", local), ("gcs", f"gs://{BUCKET}/wsi/{rel}" + ("/" if name == "dicom" else ""))):
            m = tmp_path / f"m-{name}-{where}.jsonl"
            m.write_text(json.dumps({"id": name, "image": ref, "text": "t"}) + "\n")
            out = str(tmp_path / f"o-{name}-{where}")
            s = run_pipeline("slides", ["--input", str(m), "--output_dir", out, *opts])
            assert (s["examples"], s["errors"]) == (1, 0), (name, where)
            images[(name, where)] = next(read_records(os.path.join(out, "arrayrecord")))["images"]
    for name in folders:
        assert images[(name, "gcs")] == images[(name, "local")]
    if "dicom" in folders:
        assert images[("dicom", "gcs")] == images[("svs", "local")]


def test_missing_gcs_slide_is_a_read_error(gcs, tmp_path):
    from medprep.pipelines.cli.main import run_pipeline

    (tmp_path / "m.jsonl").write_text(json.dumps({"image": f"gs://{BUCKET}/nowhere/slide.svs", "text": "t"}) + "\n")
    args = ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), "--max_error_fraction", "1"]
    s = run_pipeline("slides", args)
    lines = [json.loads(x) for x in open(tmp_path / "o" / "errors" / "errors-00000-of-00001.jsonl")]
    assert s["errors_by_stage"] == {"read": 1} and "file not found" in lines[0]["message"]


class _Counting(io.RawIOBase):
    """A stream that counts the bytes read through it."""

    def __init__(self, inner):
        self.inner, self.bytes = inner, 0

    def read(self, n=-1):
        data = self.inner.read(n)
        self.bytes += len(data)
        return data

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def seek(self, offset, whence=0):
        return self.inner.seek(offset, whence)

    def tell(self):
        return self.inner.tell()

    def readable(self):
        return True

    def seekable(self):
        return True


@pytest.mark.skipif(not shutil.which("OrthancWSIDicomizer"), reason="needs Debian's orthanc-wsi")
def test_dicom_wsi_on_gcs_is_read_in_ranges(gcs, tmp_path):
    """A DICOM WSI under a gs:// prefix is opened as seekable streams: one patch reads a small part."""
    from medprep.pipelines.io.sources.files import RemoteStreams
    from medprep.samples import synthetic_slide_rgb, write_svs
    from medprep.transforms.slide_reader import OpenSlideReader, open_wsi_streams
    from test_dicom_wsi import dicomize

    svs = write_svs(str(tmp_path / "s.svs"), synthetic_slide_rgb(8192, 8192, seed=5), mpp=0.25)
    folder = dicomize(svs, str(tmp_path / "dicom"), 0.25)
    upload_folder(gcs, folder, "ranged")
    total = sum(b.size for b in gcs.list_blobs(prefix="ranged/"))
    remote = RemoteStreams(f"gs://{BUCKET}/ranged/")
    counting = [_Counting(s) for s in remote.streams]
    reader = open_wsi_streams(counting)
    opened = sum(c.bytes for c in counting)
    region = reader.read(0, 4096, 4096, 256, 256)
    read = sum(c.bytes for c in counting) - opened
    local = OpenSlideReader(svs).read(0, 4096, 4096, 256, 256)
    assert np.abs(region.astype(int) - local.astype(int)).max() <= 8  # the same place (JPEG re-encoded)
    assert opened + read < total / 4, (opened, read, total)
    assert read < total / 50
    reader.close()
    remote.cleanup()
