"""Discovery without a manifest: a folder/prefix listed per sub-folder in parallel and grouped by series
in the pipeline; rows numbered in reference order exactly as one sorted list of every item would."""

import dataclasses
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from medprep.pipelines.config import Config
from medprep.pipelines.io import discovery
from medprep.pipelines.io.discovery import DiscoverRows, ListingUnit, listing_units
from medprep.samples import write_series


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """40 two-slice series in nested folders: patients/pNN/studyK/, some directly under a patient folder,
    two series directly in the root, one series split over two folders, and files that are not DICOM."""
    root = tmp_path_factory.mktemp("tree") / "in"
    for s in range(40):
        if s < 2:
            folder = root
        elif s % 3 == 0:
            folder = root / "patients" / f"p{s % 7:02d}"
        else:
            folder = root / "patients" / f"p{s % 7:02d}" / f"study{s % 4}" / f"series{s}"
        paths = write_series(str(folder / f"s{s}"), 2, series=s, patient=s % 7, values=lambda k: np.full((4, 4), k))
        if s == 5:  # the same series' second file in another folder
            os.makedirs(root / "elsewhere")
            os.rename(paths[1], root / "elsewhere" / "x.dcm")
    (root / "notes.txt").write_text("not dicom")
    (root / "patients" / "README").write_text("not dicom either")
    for name in ("s0", "s1"):  # the two root series' files directly in the root
        for f in os.listdir(root / name):
            os.rename(root / name / f, root / f"{name}_{f}")
        os.rmdir(root / name)
    reports = tmp_path_factory.mktemp("r") / "reports.jsonl"
    reports.write_text(json.dumps({"study_uid": "not-a-study", "text": "nothing"}) + "\n")
    return str(root), str(reports)


def _discovered(config: Config, per_series: bool, out: str) -> list[dict]:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        rows = p | DiscoverRows(config, per_series)
        rows | beam.Map(lambda r: open(out, "a").write(json.dumps(r) + "\n"))
    return sorted((json.loads(x) for x in open(out)), key=lambda r: r["row"])


def _one_list_rows(prefix: str, config: Config, per_series: bool) -> list[dict]:
    """Discovery as it was: one listing of the whole prefix, every series in one sorted list."""
    series: dict = {}
    for m in FileSystems.match([prefix + "/**"])[0].metadata_list:
        for uid, member in discovery._file_header(m.path):
            series.setdefault(uid, []).append(member)
    items = []
    for members in series.values():
        members = sorted(members)
        if per_series:
            items.append(([m[0] for m in members], members[0][1], members[0][2]))
        else:
            items += [([m[0]], m[1], m[2]) for m in members]
    rows = []
    for n, (files, _study, _accession) in enumerate(sorted(items), start=1):
        rows.append(discovery._row((n, tuple(files)), None))  # the tree's one report matches nothing
    return rows


@pytest.mark.parametrize("per_series", [True, False])
def test_rows_equal_one_sorted_list_of_every_item(tree, tmp_path, per_series):
    root, reports = tree
    config = dataclasses.replace(Config(), input=root + "/", reports=reports)
    rows = _discovered(config, per_series, str(tmp_path / "rows.jsonl"))
    assert rows == _one_list_rows(root, config, per_series)
    assert len(rows) == (40 if per_series else 80)
    assert [r["row"] for r in rows] == list(range(1, len(rows) + 1))
    split = [r for r in rows if any("elsewhere" in f for f in r["images"])]
    assert len(split) == 1 and (len(split[0]["images"]) == 2) == per_series


def test_the_prefix_is_listed_in_units_and_grouped_in_the_pipeline(tree):
    root, reports = tree
    units = listing_units(root, files_per_unit=3)
    # the root holds elsewhere/, patients/, notes.txt and the 4 files of series 0 and 1: folders are
    # units of their own, the files runs of at most 3 that never span a folder, all in path order
    root_files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.startswith("s"))
    assert len(root_files) == 4
    assert units == [
        ListingUnit(root + "/elsewhere/", folder=root + "/elsewhere"),
        ListingUnit(root + "/notes.txt", files=(root + "/notes.txt",)),
        ListingUnit(root + "/patients/", folder=root + "/patients"),
        ListingUnit(root_files[0], files=tuple(root_files[:3])),
        ListingUnit(root_files[3], files=(root_files[3],)),
    ]
    config = dataclasses.replace(Config(), input=root + "/", reports=reports)
    p = beam.Pipeline(runner=FnApiRunner())
    p | DiscoverRows(config, per_series=True)
    labels = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels[node.full_label] = node.transform

        def visit_transform(self, node):
            labels[node.full_label] = node.transform

    p.visit(Visitor())
    assert isinstance(labels["DiscoverRows/BySeries"], beam.GroupByKey)
    assert isinstance(labels["DiscoverRows/Rows/ByBucket"], beam.GroupByKey)
    assert isinstance(labels["DiscoverRows/SpreadUnits"], beam.Reshuffle)
    assert not [k for k, t in labels.items() if isinstance(t, beam.combiners.ToList) and "Starts" not in k]


class _FakeQido:
    """A QIDO-RS server of `n` series (one study per 2 series), honouring limit/offset unless told not to."""

    def __init__(self, n: int, honours_limit: bool = True):
        self.n, self.honours_limit, self.requests = n, honours_limit, []

    def search(self, level, query):
        self.requests.append((query.get("offset"), query.get("limit")))
        items = [
            {discovery.STUDY: {"Value": [f"1.{s // 2}"]}, discovery.SERIES: {"Value": [f"1.{s // 2}.{s}"]}}
            for s in range(self.n)
        ]
        if not self.honours_limit:
            return items
        return items[query["offset"] : query["offset"] + query["limit"]]


@pytest.mark.parametrize("honours_limit", [True, False])
def test_a_dicomweb_search_is_read_page_by_page(tmp_path, monkeypatch, honours_limit):
    server = _FakeQido(5, honours_limit)
    monkeypatch.setattr(discovery, "client_for", lambda url: server)
    monkeypatch.setattr(discovery, "QIDO_PAGE", 2)
    config = dataclasses.replace(Config(), dicomweb_url="http://pacs/dicom-web", query="Modality=CT")
    items = list(discovery._dicomweb_items(config, "series"))
    assert [i[0] for i in items] == [
        (f"http://pacs/dicom-web/studies/1.{s // 2}/series/1.{s // 2}.{s}",) for s in range(5)
    ]
    # pages of 2 until the short third one; a server that ignores limit sends everything at once
    assert server.requests == ([(0, 2), (2, 2), (4, 2)] if honours_limit else [(0, 2)])
    rows = _discovered(config, True, str(tmp_path / "rows.jsonl"))
    assert [(r["row"], r["images"]) for r in rows] == [(n + 1, list(i[0])) for n, i in enumerate(sorted(items))]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """cohort/2024/ holding 6 series folders and one series' files, beside cohort/README.txt: the root and
    cohort/ each have a single sub-folder."""
    root = tmp_path_factory.mktemp("cohort") / "in"
    year = root / "cohort" / "2024"
    for s in range(7):
        folder = year if s == 6 else year / f"series{s}"
        write_series(str(folder), 2, series=s, patient=s % 3, values=lambda k: np.full((4, 4), k))
    (root / "cohort" / "README.txt").write_text("not dicom")
    return str(root)


def test_single_sub_folder_levels_are_descended_to_where_the_folders_fan_out(cohort):
    year = cohort + "/cohort/2024"
    loose = tuple(sorted(os.path.join(year, f) for f in os.listdir(year) if f.endswith(".dcm")))
    assert len(loose) == 2
    assert listing_units(cohort) == [
        ListingUnit(loose[0], files=loose),  # s6_000N.dcm sort before series0/
        *(ListingUnit(f"{year}/series{s}/", folder=f"{year}/series{s}") for s in range(6)),
        ListingUnit(cohort + "/cohort/README.txt", files=(cohort + "/cohort/README.txt",)),
    ]
    # at most `descend` levels: one level down, cohort/2024/ is the unit
    assert listing_units(cohort, descend=1) == [
        ListingUnit(year + "/", folder=year),
        ListingUnit(cohort + "/cohort/README.txt", files=(cohort + "/cohort/README.txt",)),
    ]
    assert listing_units(cohort, descend=0) == [ListingUnit(cohort + "/cohort/", folder=cohort + "/cohort")]


@pytest.mark.parametrize("per_series", [True, False])
def test_descended_units_give_the_rows_of_one_sorted_list(cohort, tmp_path, per_series):
    config = dataclasses.replace(Config(), input=cohort + "/")
    rows = _discovered(config, per_series, str(tmp_path / "rows.jsonl"))
    assert rows == _one_list_rows(cohort, config, per_series)
    assert len(rows) == (7 if per_series else 14)


def test_a_study_date_range_is_cut_into_disjoint_searches_of_whole_days():
    from medprep.pipelines.io.discovery import date_split

    q = {"Modality": "CT", "StudyDate": "20200101-20201231"}
    parts = date_split(q, 4)
    assert [p["StudyDate"] for p in parts] == [
        "20200101-20200331",  # 366 days cut at days·i // 4: 91, 92, 91, 92 days
        "20200401-20200701",
        "20200702-20200930",
        "20201001-20201231",
    ]
    assert all(p["Modality"] == "CT" for p in parts)
    assert [p["StudyDate"] for p in date_split({"StudyDate": "20200227-20200301"})] == [
        "20200227-20200227",
        "20200228-20200228",
        "20200229-20200229",  # a leap day
        "20200301-20200301",
    ]
    assert len(date_split(q)) == 64
    for whole in (
        {"Modality": "CT"},
        {"StudyDate": "20200101"},
        {"StudyDate": "20200101-"},  # open: no known end
        {"StudyDate": "20201231-20200101"},
        {"StudyDate": "20200101-20200199"},
        {"StudyDate": "20200101-20201231", "StudyTime": "080000-170000"},  # matched together with the date
    ):
        assert date_split(whole) == [whole]


class _DatedQido:
    """A QIDO-RS server of 30 series, one study each, dated 2020-01-01 + 12·s days, and one series with no
    StudyDate that it matches to every range (as some servers do)."""

    def __init__(self):
        self.dates = []

    def search(self, level, query):
        import datetime

        self.dates.append(query["StudyDate"])
        low, high = query["StudyDate"].split("-")
        out = [{discovery.STUDY: {"Value": ["9.9"]}, discovery.SERIES: {"Value": ["9.9.1"]}}]
        for s in range(30):
            date = (datetime.date(2020, 1, 1) + datetime.timedelta(days=12 * s)).strftime("%Y%m%d")
            if low <= date <= high:
                out.append({discovery.STUDY: {"Value": [f"1.{s}"]}, discovery.SERIES: {"Value": [f"1.{s}.1"]}})
        return out[query["offset"] : query["offset"] + query["limit"]]


def test_a_split_search_keeps_one_of_an_item_every_range_returns(tmp_path, monkeypatch):
    server = _DatedQido()
    monkeypatch.setattr(discovery, "client_for", lambda url: server)
    config = dataclasses.replace(Config(), dicomweb_url="http://pacs/dicom-web", query="StudyDate=20200101-20201231")
    split = _discovered(config, True, str(tmp_path / "split.jsonl"))
    assert len(server.dates) == 64
    monkeypatch.setattr(discovery, "DATE_SPLITS", 1)
    assert _discovered(config, True, str(tmp_path / "whole.jsonl")) == split
    assert len(split) == 31 and [r["row"] for r in split] == list(range(1, 32))  # 30 dated in 2020 (12·29 < 366)
