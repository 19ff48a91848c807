"""DICOMweb discovery over a StudyDate range against a real Orthanc: the search is cut into searches of whole
days run by different workers, and the rows are exactly those of the one search."""

import dataclasses
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

import orthanc  # tests/orthanc.py
from medprep.pipelines.config import Config
from medprep.pipelines.io import discovery
from medprep.pipelines.io.discovery import DiscoverRows
from medprep.samples import write_series

pytestmark = pytest.mark.skipif(
    not orthanc.available() and os.environ.get("MEDPREP_REQUIRE_ORTHANC") != "1",
    reason="Orthanc + DICOMweb plugin not installed (apt-get install orthanc orthanc-dicomweb)",
)

DATES = ["20191231", "20200101", "20200220", "20200331", "20200601", "20201231", "20210101", ""]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Orthanc holding one CT study per date of DATES (the last with no StudyDate) and an MR study in the range."""
    s = orthanc.OrthancServer(str(tmp_path_factory.mktemp("orthanc")))
    folder = tmp_path_factory.mktemp("studies")
    try:
        for n, date in enumerate([*DATES, "20200601"]):
            modality = "MR" if n == len(DATES) else "CT"
            extra = {"StudyDate": date, "StudyInstanceUID": f"1.2.3.{n}", "AccessionNumber": f"A{n}"}
            for path in write_series(str(folder / f"s{n}"), 2, series=n, patient=n, modality=modality,
                                     values=lambda k: np.full((4, 4), k), extra=extra):  # fmt: skip
                s.upload(path)
        yield s
    finally:
        s.stop()


class _Recording:
    """The process's DICOMweb client, recording each search's StudyDate."""

    def __init__(self, inner, dates: list):
        self.inner, self.dates = inner, dates

    def search(self, level, query):
        self.dates.append(query.get("StudyDate"))
        return self.inner.search(level, query)


def _rows(config: Config, out) -> list[dict]:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | DiscoverRows(config, True) | beam.Map(json.dumps) | beam.io.WriteToText(str(out / "rows"))
    lines = [line for f in sorted(out.glob("rows*")) for line in f.read_text().splitlines()]
    return sorted((json.loads(line) for line in lines), key=lambda r: r["row"])


def test_a_date_range_search_is_split_and_gives_the_rows_of_one_search(server, tmp_path, monkeypatch):
    dates: list = []
    real = discovery.client_for
    monkeypatch.setattr(discovery, "client_for", lambda url: _Recording(real(url), dates))
    config = dataclasses.replace(
        Config(), dicomweb_url=server.dicomweb, query="Modality=CT&StudyDate=20200101-20201231"
    )
    split = _rows(config, tmp_path / "split")
    searched = sorted(dates)
    dates.clear()
    monkeypatch.setattr(discovery, "DATE_SPLITS", 1)
    whole = _rows(config, tmp_path / "whole")
    assert dates == ["20200101-20201231"]
    assert len(searched) == 64 and len(set(searched)) == 64 and "20200101-20201231" not in searched
    assert split == whole
    studies = [r["images"][0].split("/studies/")[1].split("/")[0] for r in split]
    # the CT studies dated in 2020 (1 to 5); Orthanc matches no range to the study without a StudyDate
    assert studies == [f"1.2.3.{n}" for n in range(1, 6)]
    assert [r["row"] for r in split] == list(range(1, len(split) + 1))
