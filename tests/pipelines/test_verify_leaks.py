"""`medprep verify` against leaks across splits and identifiers beyond DICOM headers; inspect's duplicates section.

Inputs are laid out as PACS exports are (MRN-…/NAME^GIVEN_birthdate/file); real pipeline runs, then
the outputs are tampered with (or built) so that each check fires, with the exact messages.
Salt 'leaks-0' with --test_fraction 0.5 puts patient PAT-000123 in train and PAT-000456 in test.
"""

import io
import json
import math
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medprep.pipelines.cli.main import main, run_pipeline
from medprep.pipelines.tools.verify import (
    IdentifierSet,
    ImageIndex,
    path_components,
    phash,
    pixel_digest,
    url_credentials,
    verify,
)
from medprep.samples import write_dicom

SPLIT_ARGS = ["--split_salt", "leaks-0", "--val_fraction", "0", "--test_fraction", "0.5", "--image_size", "128"]
SPLIT_ARGS += ["--max_error_fraction", "1"]  # inputs that fail on purpose
A, B, GONE = "PAT-000123", "PAT-000456", "PAT-000789"
ROW1_DIR, ROW2_DIR = "MRN-12345/DOE^JANE_19600101", "MRN-67890/ROE^RICHARD_19550505"


def _texture(seed: int, shape=(120, 150)) -> np.ndarray:
    """A smooth RGB picture with structure (blobs on a gradient), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = 60 + 80 * x / shape[1] + 40 * y / shape[0]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(8, 30)
        img += rng.uniform(-60, 60) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    grey = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.stack([grey, np.roll(grey, 3, axis=1), grey[::-1]], axis=-1)


def _write_rows(folder, rows):
    path = os.path.join(folder, "manifest.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _by_text(out):
    from medprep.schemas import read_records

    return {r["text"]: r for r in read_records(os.path.join(out, "parquet"))}


def _rewrite_parquet(out, change):
    """Apply change(row) to every row of every Parquet shard (rows as pyarrow gives them, images as structs)."""
    folder = os.path.join(out, "parquet")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        table = pq.read_table(path)
        rows = table.to_pylist()
        for row in rows:
            change(row)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """PNG and DICOM inputs under MRN/name folders, one missing file; a Parquet-only output."""
    d = tmp_path_factory.mktemp("pacs")
    inp = d / "in"
    for sub, seed in ((ROW1_DIR, 1), (ROW2_DIR, 2)):
        os.makedirs(inp / sub)
        Image.fromarray(_texture(seed)).save(inp / sub / "img.png")
    write_dicom(
        str(inp / ROW1_DIR / "cxr.dcm"), (_texture(3)[..., 0].astype(np.uint16) * 16), patient=1, window=(2000, 4000)
    )
    manifest = _write_rows(
        str(inp),
        [
            {"id": "r1", "image": f"{ROW1_DIR}/img.png", "patient_id": A, "text": "first patient photo"},
            {"id": "r2", "image": f"{ROW2_DIR}/img.png", "patient_id": B, "text": "second patient photo"},
            {"id": "r3", "image": f"{ROW1_DIR}/cxr.dcm", "patient_id": A, "text": "first patient radiograph"},
            {"id": "r4", "image": "MRN-99999/GONE^GONE_19000101/missing.png", "patient_id": GONE, "text": "gone"},
        ],
    )
    out = str(d / "out")
    s = run_pipeline("images", ["--input", manifest, "--output_dir", out, "--formats", "parquet", *SPLIT_ARGS])
    assert (s["examples"], s["errors"], s["errors_by_stage"]) == (3, 1, {"read": 1})
    return d, out


@pytest.fixture()
def tampered(pacs, tmp_path):
    copy = str(tmp_path / "out")
    shutil.copytree(pacs[1], copy)
    return copy


def test_clean_output_passes_and_counts_the_values_it_checked(pacs, capsys):
    _, out = pacs
    recs = _by_text(out)
    assert {t: r["split"] for t, r in recs.items()} == {
        "first patient photo": "train",
        "second patient photo": "test",
        "first patient radiograph": "train",
    }
    line = json.loads(open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl")).readline())
    assert "MRN-99999" in line["ref"]  # an error line names its own input: that is allowed
    problems, facts = verify(out)
    assert problems == []
    # 9 path components (MRN-12345, DOE^JANE_19600101, img.png, MRN-67890, ROE^RICHARD_19550505, cxr.dcm,
    # MRN-99999, GONE^GONE_19000101, missing.png), 3 patient ids; header values are the pipeline's to check
    assert facts["phi_values_by_kind"] == {"manifest_patient_id": 3, "path_component": 9, "url_credential": 0}
    assert (facts["phi_values_checked"], facts["phi_hits"], facts["identical_images_across_splits"]) == (12, 0, 0)
    assert (facts["records_checked_for_identifiers"], facts["identifier_hits"]) == (3, 0)
    assert main(["verify", out]) == 0
    assert capsys.readouterr().out.startswith(f"OK {out}: ")


def test_png_only_inputs_are_checked_for_ids_and_path_components(tmp_path):
    """No DICOM header at all: the manifest's values are still checked, and a planted MRN folder is found."""
    inp = tmp_path / "in"
    os.makedirs(inp / ROW2_DIR)
    Image.fromarray(_texture(5)).save(inp / ROW2_DIR / "photo_01.png")
    manifest = _write_rows(str(inp), [{"image": f"{ROW2_DIR}/photo_01.png", "patient_id": B, "text": "skin"}])
    out = str(tmp_path / "out")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, "--formats", "parquet", *SPLIT_ARGS])
    problems, facts = verify(out)
    assert problems == [] and facts["phi_values_checked"] == 4
    assert facts["phi_values_by_kind"] == {"manifest_patient_id": 1, "path_component": 3, "url_credential": 0}
    _rewrite_parquet(out, lambda row: row.update(text="photo from ROE^RICHARD_19550505 (pat-000456)"))
    eid = _by_text(out)["photo from ROE^RICHARD_19550505 (pat-000456)"]["example_id"]
    assert sorted(verify(out)[0]) == [
        f"identifier 'path component of manifest row 1 image' found in record {eid} field text",
        f"identifier 'patient_id of manifest row 1' found in record {eid} field text",
        f"identifier pattern 'DICOM person name' found in record {eid} field text",
    ]


def test_identifiers_planted_anywhere_are_named_with_record_and_field(tampered):
    recs = _by_text(tampered)
    first, second = recs["first patient radiograph"]["example_id"], recs["second patient photo"]["example_id"]

    def plant(row):
        if row["text"] == "second patient photo":
            row["text"] = "Compared with the study in MRN-12345."
            row["label"] = A.lower()
            info = json.loads(row["image_info"][0])
            info["note"] = "DOE^JANE_19600101"
            row["image_info"] = [json.dumps(info)]
        if row["text"] == "first patient radiograph":
            row["prompt"] = "Patient MRN-CANARY-00001, what do you see?"
            row["box_labels"] = ["cxr.dcm"]

    _rewrite_parquet(tampered, plant)
    err_path = os.path.join(tampered, "errors", "errors-00000-of-00001.jsonl")
    line = json.loads(open(err_path).readline())
    line["message"] += " (see also MRN-67890)"
    open(err_path, "w").write(json.dumps(line) + "\n")
    summary_path = os.path.join(tampered, "summary.json")
    summary = json.load(open(summary_path))
    summary["config"]["reports"] = f"/reports/{ROW2_DIR}/reports.csv"
    json.dump(summary, open(summary_path, "w"))
    problems, facts = verify(tampered)
    assert sorted(problems) == sorted(
        [
            "identifier 'path component of manifest row 2 image' found in summary.json field config.reports",
            "identifier 'path component of manifest row 2 image' found in errors/errors-00000-of-00001.jsonl line 1 "
            "field message",
            f"identifier 'path component of manifest row 1 image' found in record {second} field text",
            f"identifier pattern 'labelled record number' found in record {second} field text",
            f"identifier 'patient_id of manifest row 1' found in record {second} field label",
            f"identifier 'path component of manifest row 1 image' found in record {second} field image_info[0].note",
            f"identifier pattern 'DICOM person name' found in record {second} field image_info[0].note",
            f"identifier pattern 'labelled record number' found in record {first} field prompt",
            f"identifier 'path component of manifest row 3 image' found in record {first} field box_labels[0]",
        ]
    )
    assert facts["phi_hits"] == 9
    assert main(["verify", tampered]) == 1


def test_identical_pixels_in_two_splits_are_caught_whatever_the_png_encoding(tampered):
    recs = _by_text(tampered)
    a, b = recs["first patient photo"], recs["second patient photo"]
    assert (a["split"], b["split"]) == ("train", "test")
    pixels = Image.open(io.BytesIO(a["images"][0]))
    buf = io.BytesIO()
    pixels.save(buf, format="PNG", compress_level=9, optimize=True)
    assert buf.getvalue() != a["images"][0]

    def copy_image(row):
        if row["text"] == "second patient photo":
            row["images"] = [{"bytes": buf.getvalue(), "path": row["images"][0]["path"]}]

    _rewrite_parquet(tampered, copy_image)
    problems, facts = verify(tampered)
    assert problems == [
        f"identical image in splits train, test under different patient keys: "
        f"record {a['example_id']} image 0 (train), record {b['example_id']} image 0 (test)"
    ]
    assert facts["identical_images_across_splits"] == 1


@pytest.fixture(scope="module")
def duplicates(tmp_path_factory):
    """One picture under two patients (train, test), a blank one likewise, and a slightly changed copy."""
    d = tmp_path_factory.mktemp("dups")
    inp = d / "in"
    os.makedirs(inp / "shared")
    x = _texture(7, (140, 140))
    Image.fromarray(x).save(inp / "shared" / "scan_0001.png")
    Image.fromarray(np.zeros((140, 140, 3), np.uint8)).save(inp / "shared" / "blank_0001.png")
    y = x.copy()
    y[60:70, 60:70] = 255 - y[60:70, 60:70]  # a small mark: not identical, perceptually close (2 bits)
    Image.fromarray(y).save(inp / "shared" / "scan_0001_marked.png")
    manifest = _write_rows(
        str(inp),
        [
            {"id": "xa", "image": "shared/scan_0001.png", "patient_id": A, "text": "x of A"},
            {"id": "xb", "image": "shared/scan_0001.png", "patient_id": B, "text": "x of B"},
            {"id": "ka", "image": "shared/blank_0001.png", "patient_id": A, "text": "blank of A"},
            {"id": "kb", "image": "shared/blank_0001.png", "patient_id": B, "text": "blank of B"},
            {"id": "yb", "image": "shared/scan_0001_marked.png", "patient_id": B, "text": "marked x of B"},
        ],
    )
    out = str(d / "out")
    run_pipeline("images", ["--input", manifest, "--output_dir", out, *SPLIT_ARGS])
    return d, out


def test_verify_names_identical_images_across_splits_and_lists_near_duplicates(duplicates, capsys):
    _, out = duplicates
    recs = _by_text(out)
    split = {t: r["split"] for t, r in recs.items()}
    assert split == {
        "x of A": "train",
        "x of B": "test",
        "blank of A": "train",
        "blank of B": "test",
        "marked x of B": "test",
    }
    xa, xb, yb = (recs[t]["example_id"] for t in ("x of A", "x of B", "marked x of B"))
    identical = (
        f"identical image in splits train, test under different patient keys: "
        f"record {xa} image 0 (train), record {xb} image 0 (test)"
    )
    problems, facts = verify(out)
    assert problems == [identical] and "near_duplicates" not in facts  # the blank pair is not an image of anyone
    problems, facts = verify(out, near_duplicates=True)
    bits = bin(
        phash(Image.open(io.BytesIO(recs["x of A"]["images"][0])))[0]
        ^ phash(Image.open(io.BytesIO(recs["marked x of B"]["images"][0])))[0]
    ).count("1")
    assert 1 <= bits <= 4
    assert problems == [identical]
    assert facts["near_duplicate_pairs"] == [(bits, (xa, 0, "train"), (yb, 0, "test"))]
    assert (facts["near_duplicates"], facts["near_duplicates_truncated"]) == (1, False)
    assert main(["verify", out, "--near_duplicates"]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"FAIL {identical}",
        f"NEAR {bits} bits: record {xa} image 0 (train), record {yb} image 0 (test)",
        f"{out}: 1 problem(s)",
    ]
    assert verify(out, near_duplicates=True, phash_distance=bits - 1)[1]["near_duplicate_pairs"] == []


def test_phash_distance_option_is_validated(duplicates, capsys):
    _, out = duplicates
    with pytest.raises(SystemExit) as exc:
        main(["verify", out, "--near_duplicates", "--phash_distance", "17"])
    assert exc.value.code == 2
    assert "argument --phash_distance: expected a number of bits from 0 to 16, got '17'" in capsys.readouterr().err


def test_inspect_report_lists_duplicates_across_splits(duplicates):
    from medprep.pipelines.tools.inspect import build_report

    _, out = duplicates
    recs = _by_text(out)
    xa, xb, yb = (recs[t]["example_id"] for t in ("x of A", "x of B", "marked x of B"))
    page, _ = build_report(out)
    assert '<p id="duplicates-not-run">' in page and 'id="near-duplicates"' not in page
    assert main(["inspect", out, "--near_duplicates"]) == 0
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert '<span id="identical-count">1</span>' in page and '<span id="near-count">1</span>' in page
    assert f'<tr class="identical" data-images="{xa}:0 {xb}:0">' in page
    assert f'data-a="{xa}:0" data-b="{yb}:0">' in page
    section = page[page.index('<h2 id="duplicates">') : page.index("<h2>Contact sheet</h2>")]
    assert section.count("<img ") == 4  # thumbnails of both images of both rows


def test_keep_source_allows_references_in_source_but_not_elsewhere(tmp_path):
    inp = tmp_path / "in"
    os.makedirs(inp / ROW1_DIR)
    Image.fromarray(_texture(9)).save(inp / ROW1_DIR / "img.png")
    manifest = _write_rows(str(inp), [{"image": f"{ROW1_DIR}/img.png", "patient_id": A, "text": "kept"}])
    out = str(tmp_path / "out")
    run_pipeline(
        "images", ["--input", manifest, "--output_dir", out, "--formats", "parquet", "--keep_source", *SPLIT_ARGS]
    )
    rec = _by_text(out)["kept"]
    assert rec["source"] == [f"{ROW1_DIR}/img.png"]
    assert verify(out)[0] == []
    _rewrite_parquet(out, lambda row: row.update(prompt="from MRN-12345"))
    assert verify(out)[0] == [
        f"identifier 'path component of manifest row 1 image' found in record {rec['example_id']} field prompt",
        f"identifier pattern 'labelled record number' found in record {rec['example_id']} field prompt",
    ]


def test_manifest_that_cannot_be_read_fails_instead_of_checking_nothing(pacs, tmp_path):
    d, out = pacs
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    summary_path = os.path.join(copy, "summary.json")
    summary = json.load(open(summary_path))
    summary["config"]["input"] = str(tmp_path / "moved" / "manifest.jsonl")
    json.dump(summary, open(summary_path, "w"))
    problems, _ = verify(copy)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"cannot read the manifest {tmp_path}/moved/manifest.jsonl (summary.json config.input) to check identifiers: "
    )
    assert problems[0].endswith("verify where the manifest is readable, or pass --no_phi_scan")
    assert verify(copy, phi_scan=False)[0] == []


@pytest.mark.parametrize(
    "ref, manifest, expected",
    [
        (
            "MRN-12345/DOE^JANE_19600101/img.dcm",
            "/srv/proj/manifest.jsonl",
            ["MRN-12345", "DOE^JANE_19600101", "img.dcm"],
        ),
        ("/srv/proj/MRN-77/NORMAL/a.png", "/srv/proj/manifest.jsonl", ["MRN-77", "a.png"]),
        ("/home/j.smith/exports/PNEUMONIA/MRN-1/scan_01.png", "/srv/proj/manifest.jsonl", ["MRN-1", "scan_01.png"]),
        ("/tmp/run_2024/images/0001/2020/123456/x.nii.gz", "/srv/m.csv", ["run_2024", "123456", "x.nii.gz"]),
        ("1.2.840.10008.1/1.2.840.10008.1.2.dcm", "/srv/m.csv", []),
        (
            "https://alice:S3CRET@host/v1/projects/p-1/locations/us/datasets/d_1/dicomStores/s_1/dicomWeb/studies/1.2.3/"
            "series/4.5.6",
            "/srv/m.csv",
            [],
        ),
        ("http://host:8042/dicom-web/studies/1.2/series/3.4/instances/5.6", "/srv/m.csv", []),
        ("gs://bucket-mrn/exports/MRN-5555/x_1.svs", "gs://other/m.jsonl", ["MRN-5555", "x_1.svs"]),
        ("gs://bucket-mrn/ds_01/MRN-5555/x_1.svs", "gs://bucket-mrn/ds_01/m.jsonl", ["MRN-5555", "x_1.svs"]),
        ("/srv/proj/out_7/MRN-4/ab.png", "/srv/proj/m.jsonl", ["MRN-4", "ab.png"]),
    ],
)
def test_path_components_rule(ref, manifest, expected):
    assert path_components(ref, manifest, {"out_7"}) == expected


def test_url_password_is_a_value_to_look_for():
    ref = "http://alice:S3CRET99@host/dicom-web/studies/1.2/series/3.4"
    assert url_credentials(ref) == ["S3CRET99"] and url_credentials("http://host/dicom-web") == []
    ids = IdentifierSet()
    ids.add("S3CRET99", "password in the URL of manifest row 1 image", "url_credential")
    assert ids.find("GET http://alice:S3CRET99@host failed") == [
        ("password in the URL of manifest row 1 image", "url_credential")
    ]


def test_identifier_matching_is_case_insensitive_at_word_edges_and_skips_unspecific_values():
    ids = IdentifierSet()
    for value, what in (
        ("DOE^JANE", "name"),
        ("JANE", "part"),
        ("MRN-12345", "mrn"),
        ("1234", "short number"),
        ("100042", "number"),
        ("ab", "short"),
    ):
        ids.add(value, what, "dicom_header")
    assert ids.counts() == {"dicom_header": 4}
    assert ids.find("Seen: doe^jane, mrn-12345.") == [
        ("mrn", "dicom_header"),
        ("name", "dicom_header"),
        ("part", "dicom_header"),
    ]
    assert ids.find("JANET MRN-123456 x1000420 1234 ab") == []
    assert ids.find('{"x": 100042}') == [("number", "dicom_header")]
    assert ids.find("jane is here", skip=frozenset({"jane"})) == []


def test_phash_equals_the_textbook_dct_definition():
    """An independent DCT-II by the formula, on a 32x32 grey image (no resize involved)."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    value, spread = phash(Image.fromarray(grey, "L"))
    f = grey.astype(np.float64)
    coeff = [
        [
            sum(
                f[y, x] * 4 * math.cos(math.pi * u * (2 * y + 1) / 64) * math.cos(math.pi * v * (2 * x + 1) / 64)
                for y in range(32)
                for x in range(32)
            )
            for v in range(8)
        ]
        for u in range(8)
    ]
    flat = [c for row in coeff for c in row]
    median = sorted(flat)[31] / 2 + sorted(flat)[32] / 2
    expected = int("".join("1" if c > median else "0" for c in flat), 2)
    assert value == expected and spread == pytest.approx(float(f.std()))


def test_phash_distance_small_for_copies_and_large_for_other_pictures():
    x = Image.fromarray(_texture(11, (200, 240)))
    buf = io.BytesIO()
    x.save(buf, format="JPEG", quality=80)
    jpeg = Image.open(io.BytesIO(buf.getvalue()))
    small = x.resize((120, 100), Image.Resampling.BILINEAR)
    other = Image.fromarray(_texture(12, (200, 240)))
    h = phash(x)[0]

    def dist(img):
        return bin(h ^ phash(img)[0]).count("1")

    assert dist(jpeg) <= 2 and dist(small) <= 4 and dist(other) >= 12


def test_pixel_digest_depends_on_pixels_only():
    x = _texture(4)[..., 0]
    grey, rgb = Image.fromarray(x, "L"), Image.fromarray(np.stack([x] * 3, -1))
    assert pixel_digest(grey) == pixel_digest(rgb) and len(pixel_digest(grey)) == 16
    png = io.BytesIO()
    rgb.save(png, format="PNG", compress_level=0)
    assert pixel_digest(Image.open(io.BytesIO(png.getvalue()))) == pixel_digest(rgb)
    x2 = x.copy()
    x2[0, 0] ^= 1
    assert pixel_digest(Image.fromarray(x2, "L")) != pixel_digest(grey)
    assert pixel_digest(Image.fromarray(x.reshape(150, 120), "L")) != pixel_digest(grey)  # same bytes, other shape
    assert pixel_digest(Image.new("RGB", (9, 9), (200, 10, 10))) is None


def test_near_pair_search_finds_exactly_what_brute_force_finds():
    """The pigeonhole block search against all pairs, on random hashes with planted close ones."""
    rng = np.random.default_rng(0)
    index = ImageIndex(near=True)
    hashes = []
    for n in range(400):
        rec = index.add_record(f"e{n:03d}", ("train", "val", "test")[n % 3], f"p{n % 47}")
        h = int(rng.integers(0, 2**63)) * 2 + n % 2
        if n >= 200:  # a neighbour of an earlier one, 0-6 bits away
            h = hashes[n - 200]
            for bit in rng.choice(64, int(rng.integers(0, 7)), replace=False):
                h ^= 1 << int(bit)
        hashes.append(h)
        index.add_hashes(rec, 0, bytes([n % 256, n // 256]) * 8, h)
    for distance in (0, 3, 6):
        expected = []
        for i in range(400):
            for j in range(i + 1, 400):
                bits = bin(hashes[i] ^ hashes[j]).count("1")
                if bits <= distance and i % 3 != j % 3 and i % 47 != j % 47:
                    one, two = sorted(
                        [
                            (f"e{i:03d}", 0, ("train", "val", "test")[i % 3]),
                            (f"e{j:03d}", 0, ("train", "val", "test")[j % 3]),
                        ],
                        key=lambda d: (("train", "val", "test").index(d[2]), d[0]),
                    )
                    expected.append((bits, one, two, False))
        pairs, truncated = index.near_pairs(distance)
        assert pairs == sorted(expected) and not truncated
        assert len(expected) > (0 if distance == 0 else 20)
    assert index.near_pairs(6, limit=5)[1] is True and len(index.near_pairs(6, limit=5)[0]) == 5


def test_series_folder_files_are_listed_for_volumes(tmp_path):
    from medprep.samples import write_series

    inp = tmp_path / "in"
    write_series(str(inp / "MRN-24680" / "CT_SERIES_01"), 4, patient=2)
    manifest = _write_rows(str(inp), [{"image": "MRN-24680/CT_SERIES_01", "text": "ct"}])
    out = str(tmp_path / "out")
    run_pipeline(
        "volumes", ["--input", manifest, "--output_dir", out, "--formats", "parquet", "--max_slices", "3", *SPLIT_ARGS]
    )
    problems, facts = verify(out)
    assert problems == []
    # MRN-24680, CT_SERIES_01, s1_0000.dcm … s1_0003.dcm (listed, never opened)
    assert facts["phi_values_by_kind"] == {"manifest_patient_id": 0, "path_component": 6, "url_credential": 0}
    _rewrite_parquet(out, lambda row: row.update(text="as s1_0002.dcm shows", prompt="MRN-CANARY-00002"))
    eid = _by_text(out)["as s1_0002.dcm shows"]["example_id"]
    assert sorted(verify(out)[0]) == [
        f"identifier 'path component of a file in manifest row 1 image' found in record {eid} field text",
        f"identifier pattern 'labelled record number' found in record {eid} field prompt",
    ]


def test_inspect_maps_hashed_sources_back_to_the_manifest_with_the_run_salt(pacs, monkeypatch):
    from medprep.pipelines.tools.inspect import source_refs

    _, out = pacs
    summary = json.load(open(os.path.join(out, "summary.json")))
    source = _by_text(out)["second patient photo"]["source"][0]
    assert len(source) == 64 and ROW2_DIR not in source
    monkeypatch.delenv("MEDPREP_SALT", raising=False)
    assert source_refs(summary) == {}
    monkeypatch.setenv("MEDPREP_SALT", "leaks-0")
    refs = source_refs(summary)
    assert refs[source] == f"{ROW2_DIR}/img.png" and len(refs) == 4
