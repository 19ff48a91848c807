"""DICOM WSI (made from a generated SVS by Debian's OrthancWSIDicomizer) read through wsidicom."""

import contextlib
import json
import os
import shutil
import subprocess

import pydicom
import pytest

from medprep.pipelines.cli.main import run_pipeline
from medprep.samples import synthetic_slide_rgb, write_series, write_svs
from medprep.schemas import read_records
from medprep.transforms.errors import ItemError
from medprep.transforms.image import ImageOptions
from medprep.transforms.slide import SlideOptions, prepare_slide

DICOMIZER = shutil.which("OrthancWSIDicomizer")
pytestmark = pytest.mark.skipif(
    not DICOMIZER and os.environ.get("MEDPREP_REQUIRE_ORTHANC") != "1",
    reason="OrthancWSIDicomizer not installed (apt-get install orthanc-wsi)",
)
SIDE = 4096  # square: the dicomizer derives one pixel spacing from the imaged size
OPTS = SlideOptions(image=ImageOptions(size=112), patch_size=112, stride=112, max_patches=12)


def dicomize(svs: str, folder: str, mpp: float) -> str:
    """SVS -> DICOM WSI folder; ImageType set (wsidicom needs it), imaged size matching the MPP."""
    sample = json.loads(subprocess.run([DICOMIZER, "--sample-dataset"], capture_output=True, text=True).stdout)
    sample["ImageType"] = "ORIGINAL\\PRIMARY\\VOLUME\\NONE"
    os.makedirs(folder, exist_ok=True)
    dataset = os.path.join(folder, "..", os.path.basename(folder) + ".json")
    with open(dataset, "w") as fh:
        json.dump(sample, fh)
    size_mm = f"{SIDE * mpp / 1000:.6f}"
    subprocess.run(
        [
            DICOMIZER,
            svs,
            f"--folder={folder}",
            f"--dataset={dataset}",
            f"--imaged-width={size_mm}",
            f"--imaged-height={size_mm}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("dwsi")
    svs = write_svs(str(d / "s.svs"), synthetic_slide_rgb(SIDE, SIDE, seed=4), mpp=0.25)
    return svs, dicomize(svs, str(d / "dicom"), 0.25)


@contextlib.contextmanager
def served(folder: str, tmp_path):
    """A real Orthanc holding the DICOM WSI in `folder`; yields the series' DICOMweb URL."""
    import orthanc  # tests/orthanc.py

    if not orthanc.available():
        pytest.skip("Orthanc not installed")
    (tmp_path / "orthanc").mkdir()
    server = orthanc.OrthancServer(str(tmp_path / "orthanc"))
    try:
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        for f in files:
            server.upload(f)
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        yield f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    finally:
        server.stop()


def _key(p):
    return [(i["x"], i["y"], i["level"], i["read_side"]) for i in p.image_info]


def test_dicom_wsi_patches_equal_the_svs(pair):
    svs, folder = pair
    a, b = prepare_slide(svs, options=OPTS), prepare_slide(folder, options=OPTS)
    assert b.plan.info["mpp_source"] == "metadata" and b.plan.info["level"] == 1 and b.plan.info["resize"] == 1.0
    assert _key(a) == _key(b) and a.encoded == b.encoded and len(a.encoded) == 12


def test_missing_pyramid_level_uses_the_levels_present(pair, tmp_path):
    _, folder = pair
    broken = str(tmp_path / "broken")
    shutil.copytree(folder, broken)
    for name in os.listdir(broken):
        header = pydicom.dcmread(os.path.join(broken, name), stop_before_pixels=True)
        if int(header.TotalPixelMatrixColumns) == SIDE // 4:
            os.remove(os.path.join(broken, name))
    p = prepare_slide(broken, options=OPTS)
    assert p.plan.info["level"] == 0 and p.plan.info["resize"] == 0.25 and len(p.encoded) == 12


def test_slides_pipeline_reads_dicom_wsi_like_the_svs(pair, tmp_path):
    svs, folder = pair
    rows = [
        {"id": "svs", "image": svs, "text": "t", "patient_id": "p"},
        {"id": "dcm", "image": folder, "text": "t", "patient_id": "p"},
        {"id": "ct", "image": str(tmp_path / "ct"), "text": "not a slide"},
    ]
    write_series(str(tmp_path / "ct"), 3)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = run_pipeline(
        "slides",
        [
            "--input",
            str(tmp_path / "m.jsonl"),
            "--output_dir",
            str(tmp_path / "o"),
            "--keep_source",
            "--patch_size",
            "112",
            "--stride",
            "112",
            "--image_size",
            "112",
            "--max_patches",
            "12",
            "--max_error_fraction",
            "1",  # the CT row fails on purpose
        ],
    )
    assert (s["examples"], s["errors"]) == (2, 1)
    recs = {
        os.path.normpath(os.path.join(str(tmp_path), r["source"][0])): r  # relative to the manifest
        for r in read_records(str(tmp_path / "o" / "arrayrecord"))
    }
    assert recs[svs]["images"] == recs[folder]["images"]


def test_non_wsi_dicom_folder_is_a_clear_error(tmp_path):
    write_series(str(tmp_path / "ct"), 3)
    with pytest.raises(ItemError, match="DICOM WSI"):
        prepare_slide(str(tmp_path / "ct"), options=OPTS)


def test_dicom_wsi_from_dicomweb_series(pair, tmp_path):
    svs, folder = pair
    with served(folder, tmp_path) as url:
        assert prepare_slide(url, options=OPTS).encoded == prepare_slide(folder, options=OPTS).encoded
        (tmp_path / "m.jsonl").write_text(json.dumps({"id": "web", "image": url, "text": "t"}) + "\n")
        s = run_pipeline(
            "slides",
            [
                "--input",
                str(tmp_path / "m.jsonl"),
                "--output_dir",
                str(tmp_path / "o"),
                "--patch_size",
                "112",
                "--stride",
                "112",
                "--image_size",
                "112",
                "--max_patches",
                "12",
            ],
        )
        assert (s["examples"], s["errors"]) == (1, 0)
        rec = next(read_records(str(tmp_path / "o" / "arrayrecord")))
        assert rec["images"] == prepare_slide(folder, options=OPTS).encoded


def test_tiled_full_and_tiled_sparse_read_the_same(pair, tmp_path):
    """Orthanc-WSI writes per-frame tile positions and no DimensionOrganizationType, which is read as
    TILED_SPARSE; a copy declaring TILED_FULL (positions implied by frame order) must give the same patches."""
    from wsidicom.instance.dataset import TileType, WsiDataset

    _, sparse = pair
    full = str(tmp_path / "full")
    os.makedirs(full)
    for name in sorted(os.listdir(sparse)):
        ds = pydicom.dcmread(os.path.join(sparse, name))
        assert WsiDataset(ds).tile_type == TileType.SPARSE
        ds.DimensionOrganizationType = "TILED_FULL"
        del ds.PerFrameFunctionalGroupsSequence
        assert WsiDataset(ds).tile_type == TileType.FULL
        ds.save_as(os.path.join(full, name))
    assert prepare_slide(full, options=OPTS).encoded == prepare_slide(sparse, options=OPTS).encoded


def test_inspect_draws_the_map_of_a_dicomweb_slide(pair, tmp_path):
    from medprep.pipelines.cli.main import main

    _, folder = pair
    with served(folder, tmp_path) as url:
        (tmp_path / "m.jsonl").write_text(json.dumps({"image": url, "text": "t"}) + "\n")
        run_pipeline(
            "slides",
            [
                "--input",
                str(tmp_path / "m.jsonl"),
                "--output_dir",
                str(tmp_path / "o"),
                "--patch_size",
                "112",
                "--stride",
                "112",
                "--image_size",
                "112",
                "--max_patches",
                "4",
            ],
        )
        assert main(["inspect", str(tmp_path / "o")]) == 0
        assert open(tmp_path / "o" / "report.html").read().count('class="slidemap"') == 1


def test_both_slide_readers_satisfy_the_reader_protocol(pair):
    from medprep.transforms.slide_reader import DicomWsiReader, OpenSlideReader, SlideReader, open_slide
    from medprep.transforms.slide_tiff import TiffSlideReader

    svs, folder = pair
    readers = [open_slide(svs), open_slide(folder), OpenSlideReader(svs)]
    try:
        assert [type(r) for r in readers] == [TiffSlideReader, DicomWsiReader, OpenSlideReader]
        assert all(isinstance(r, SlideReader) for r in readers)
        assert [(r.dimensions[0], r.downsamples[0], round(r.mpps[0], 6), r.mpp_source) for r in readers] == [
            ((SIDE, SIDE), 1.0, 0.25, "metadata")
        ] * 3  # DICOM PixelSpacing: 0.250000012
        assert all(r.read(1, 0, 0, 8, 8).shape == (8, 8, 3) for r in readers)
    finally:
        for r in readers:
            r.close()
    assert not isinstance(object(), SlideReader)
