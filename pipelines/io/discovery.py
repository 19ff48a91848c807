"""Rows without a manifest: discover series/instances on a DICOMweb server or under a folder/prefix.

Discovery runs inside the pipeline (not on the launcher). Each discovered series (volumes) or
instance (images) becomes a row like a manifest row; its text comes from a reports file
(CSV/JSONL/Parquet with `study_uid` and/or `accession_number`, `text`, optional `prompt`)
joined by StudyInstanceUID, else AccessionNumber, in the pipeline (JoinReports: the file is a
PCollection, never a dict in a worker). Identifiers are only used for the join.

Nothing holds every discovered item in one place: a folder/prefix is cut into listing units (its
sub-folders, and runs of the files directly in it; through levels with a single sub-folder), listed by
different workers; headers are read in parallel and grouped by series in the pipeline (a GroupByKey); a
DICOMweb search is read page by page, and one over a StudyDate range is cut into searches of whole days
run by different workers. Rows are numbered in reference order as before (the number is part of an
example's key when a row has no id) from per-bucket counts and one bucket's items at a time (NumberRows).
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import itertools
import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.config import Config
from medprep.pipelines.io.manifest import raw_rows
from medprep.pipelines.io.sources.dicomweb import client_for
from medprep.pipelines.io.sources.files import open_input
from medprep.transforms.dicom_io import read_header
from medprep.transforms.dicomweb_ref import DicomWebRef

STUDY, SERIES, SOP, ACCESSION = "0020000D", "0020000E", "00080018", "00080050"
QIDO_PAGE = 1000  # QIDO-RS results per request (under the caps of Google's Healthcare API and others)
FILES_PER_UNIT = 1000  # files directly in a discovered prefix are listed and read in runs of this many
MAX_DESCENT = 8  # single-sub-folder levels a prefix's listing goes down through to find where it fans out
DATE_SPLITS = 64  # a QIDO search over a StudyDate range is cut into at most this many searches of whole days


def parse_query(text: str) -> dict:
    """'Modality=CT&StudyDate=20200101-20201231' (or comma-separated) -> QIDO filters."""
    out = {}
    for part in (p for p in text.replace("&", ",").split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"query term {part!r} is not Attribute=value")
        out[key.strip()] = value.strip()
    return out


REPORT_KEYS = ("study_uid", "accession_number")  # the reports file's join columns, in the order they are tried


def _report_keys(path: str) -> Iterator[tuple[int, str, str, dict]]:
    """(row from 1, column, value, {'text', 'prompt'}) for each join key of each row of a reports file, streamed.

    A key is used where its cell holds something (an empty cell joins nothing); values are compared as text."""
    for n, raw in enumerate(raw_rows(path), start=1):
        entry = {"text": str(raw.get("text") or ""), "prompt": str(raw.get("prompt") or "")}
        for column in REPORT_KEYS:
            if raw.get(column):
                yield n, column, str(raw[column]), entry


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _key_digest(column: str, value: str) -> int:
    return _digest(column + "\0" + value)


def _entry_digest(entry: dict) -> int:
    return _digest(entry["text"] + "\0" + entry["prompt"])


def _repeat_message(column: str, value: str, first: int, again: int) -> str:
    return f"{column} {value!r} on row {again} repeats row {first} with another text or prompt (one report per key)"


def check_reports(path: str) -> None:
    """Read a reports file once at start-up (streamed) and refuse (ValueError naming the column, the value and
    both rows) a study UID or accession number given two different reports (the same report twice is fine).

    Holds 16 bytes per key (a 64-bit digest of the key and of its report), not the texts: a digest that
    repeats with another report's digest is confirmed on a second read of the file, on the real values."""
    keys, entries = array("Q"), array("Q")
    for _, column, value, entry in _report_keys(path):
        keys.append(_key_digest(column, value))
        entries.append(_entry_digest(entry))
    k, e = np.frombuffer(keys, dtype=np.uint64), np.frombuffer(entries, dtype=np.uint64)
    order = np.lexsort((e, k))
    k, e = k[order], e[order]
    suspects = set(k[1:][(k[1:] == k[:-1]) & (e[1:] != e[:-1])].tolist())
    if suspects:
        seen: dict = {}
        for n, column, value, entry in _report_keys(path):
            if _key_digest(column, value) in suspects:
                first = seen.setdefault((column, value), (n, entry))
                if first[1] != entry:
                    raise ValueError(_repeat_message(column, value, first[0], n))


def _keyed_reports(path: str) -> Iterator[beam.pvalue.TaggedOutput]:
    """The reports file as (value, (row, report)) pairs, tagged by join column: streamed by one worker."""
    for n, column, value, entry in _report_keys(path):
        yield beam.pvalue.TaggedOutput(column, (value, (n, entry)))


def _json_value(item: dict, tag: str) -> str:
    value = (item.get(tag) or {}).get("Value") or [""]
    return str(value[0])


def _row(numbered: tuple[int, tuple], report: dict | None) -> dict:
    """(row number, references) and its report (None: none matched) -> a manifest-like row."""
    report = report or {"text": "", "prompt": ""}
    return {
        "row": numbered[0],
        "id": "",
        "images": list(numbered[1]),
        "prior": "",
        "text": report["text"],
        "prompt": report["prompt"],
        "boxes": [],
        "box_labels": [],
        "label": "",
        "patient_id": "",
        "modality": "",
        "mpp": None,
        "extra": {},
    }


def date_split(query: dict, parts: int = DATE_SPLITS) -> list[dict]:
    """A query whose StudyDate is a closed range of days ('20200101-20201231') as up to `parts` queries over
    consecutive, disjoint sub-ranges of whole days (searched by different workers); any other query as it is.

    Their union is the one search: a study dated in the range falls in exactly one sub-range, and one with an
    empty StudyDate, which servers match against every range or none, is in all of them or none (DiscoverRows
    keeps one of each item). With StudyTime too the query is kept whole (DICOM matches the two together as one
    date-time range)."""
    match = re.fullmatch(r"(\d{8})-(\d{8})", str(query.get("StudyDate", "")).strip())
    if match is None or "StudyTime" in query:
        return [query]
    try:
        first, last = (datetime.datetime.strptime(d, "%Y%m%d").date() for d in match.groups())
    except ValueError:
        return [query]
    days = (last - first).days + 1
    if days < 2 or parts < 2:
        return [query]
    cuts = [first + datetime.timedelta(days=days * i // min(parts, days)) for i in range(min(parts, days) + 1)]
    one_day = datetime.timedelta(days=1)
    return [{**query, "StudyDate": f"{a:%Y%m%d}-{b - one_day:%Y%m%d}"} for a, b in itertools.pairwise(cuts)]


def _dicomweb_items(config: Config, level: str, query: dict | None = None) -> Iterator[tuple]:
    """QIDO-RS search, page by page (QIDO_PAGE results per request, `limit`/`offset`): one item
    ((url,), study, accession) per series or instance, yielded as pages arrive, never all held.
    Stops at a page shorter than asked for, or longer (a server that ignores `limit` sent everything).
    `query`: the filters (default: --query's)."""
    client = client_for(config.dicomweb_url)
    query = parse_query(config.query) if query is None else query
    offset = 0
    while True:
        page = client.search(level, {**query, "limit": QIDO_PAGE, "offset": offset})
        for item in page:
            study, series = _json_value(item, STUDY), _json_value(item, SERIES)
            sop = _json_value(item, SOP) if level == "instances" else None
            yield (DicomWebRef(config.dicomweb_url, study, series, sop).url(),), study, _json_value(item, ACCESSION)
        if len(page) != QIDO_PAGE:
            return
        offset += len(page)


def _study_bucket(item: tuple, base: str) -> tuple[str, tuple]:
    """(the study's URL with a trailing '/', item): every reference of a study starts with it, so a
    study's items are one run of the sorted references."""
    return DicomWebRef(base, item[1], None, None).url() + "/", item


def _file_header(path: str):
    try:
        with open_input(path) as fh:  # regular files only: a FIFO in the folder is not waited on
            ds = read_header(fh)
    except Exception:
        return  # not DICOM: not discovered
    if "SeriesInstanceUID" in ds and "SOPClassUID" in ds:
        study, accession = str(ds.get("StudyInstanceUID", "")), str(ds.get("AccessionNumber", ""))
        yield (str(ds.SeriesInstanceUID), (path, study, accession))


def _series_items(series: tuple, per_series: bool) -> Iterator[tuple]:
    """One series' (path, study, accession) members -> one item (all its files) or one per file."""
    members = sorted(series[1])
    if per_series:
        yield tuple(m[0] for m in members), members[0][1], members[0][2]
    else:
        yield from (((m[0],), m[1], m[2]) for m in members)


@dataclass(frozen=True)
class ListingUnit:
    """What one worker lists: a sub-folder of the prefix (every file below it), or a run of files
    directly in the prefix. `start` sorts before every path of the unit and after every path of
    the units before it, so units are consecutive runs of the sorted paths."""

    start: str
    folder: str = ""  # a sub-folder, listed recursively
    files: tuple[str, ...] = ()  # or these files


def _children(prefix: str) -> tuple[list[str], list[str]]:
    """(files, sub-folders) directly under prefix, as full paths; on a filesystem with neither
    directories nor delimiter listing, ([], [prefix]): the whole prefix is one unit."""
    if "://" not in prefix:
        files, folders = [], []
        with os.scandir(prefix) as entries:
            for entry in entries:
                if not entry.is_dir():
                    files.append(os.path.join(prefix, entry.name))
                elif not entry.is_symlink():  # as os.walk (Beam's local listing): symlinked folders are not entered
                    folders.append(os.path.join(prefix, entry.name))
        return files, folders
    if prefix.startswith("gs://"):
        return _gcs_children(prefix)
    return [], [prefix]


def _gcs_children(prefix: str) -> tuple[list[str], list[str]]:
    from apache_beam.io.gcp.gcsio import GcsIO

    bucket, _, path = prefix[len("gs://") :].partition("/")
    blobs = GcsIO().client.list_blobs(bucket, prefix=path + "/" if path else "", delimiter="/")  # a bucket root
    files = [f"gs://{bucket}/{b.name}" for b in blobs if not b.name.endswith("/")]
    return files, [f"gs://{bucket}/{p.rstrip('/')}" for p in sorted(blobs.prefixes)]


def listing_units(prefix: str, files_per_unit: int = FILES_PER_UNIT, descend: int = MAX_DESCENT) -> list[ListingUnit]:
    """The prefix's listing units in path order: each sub-folder, and runs of up to `files_per_unit`
    files directly in it (a run never spans a sub-folder, so units stay consecutive).

    A level with a single sub-folder (gs://bucket/cohort/ holding cohort/2024/ and perhaps a
    few files) would make that folder one unit, listed by one worker: it is replaced by its own units, down
    to `descend` levels (one listing call each), so the units are the level where the folders fan out. The
    paths under a folder are one consecutive run of the sorted paths, so its units stay in place."""
    files, folders = _children(prefix)
    expand = len(folders) == 1 and descend > 0 and folders[0] != prefix  # ([], [prefix]): no listing by level
    entries = sorted([(f, False) for f in files] + [(d + "/", True) for d in folders])
    units: list[ListingUnit] = []
    run: list[str] = []
    for key, is_folder in entries:
        if run and (is_folder or len(run) == files_per_unit):
            units.append(ListingUnit(run[0], files=tuple(run)))
            run = []
        if is_folder and expand:
            units += listing_units(key[:-1], files_per_unit, descend - 1)
        elif is_folder:
            units.append(ListingUnit(key, folder=key[:-1]))
        else:
            run.append(key)
    if run:
        units.append(ListingUnit(run[0], files=tuple(run)))
    return units


def _list_unit(unit: ListingUnit) -> list[str]:
    if unit.files:
        return list(unit.files)
    return [m.path for m in FileSystems.match([unit.folder + "/**"])[0].metadata_list]


def _unit_of(item: tuple, starts: list[str]) -> tuple[str, tuple]:
    """(the start of the listing unit holding the item's first file, item)."""
    return starts[bisect.bisect_right(starts, item[0][0]) - 1], item


def _offsets(counts: dict) -> dict:
    """{bucket: items in the buckets before it, in key order}."""
    out, total = {}, 0
    for bucket in sorted(counts):
        out[bucket] = total
        total += counts[bucket]
    return out


class _NumberedRows(beam.DoFn):
    """(bucket, its items) -> (study, accession, (row number, references)), numbered as if every item were
    sorted together: the bucket's offset (items in the buckets before it) plus the item's place in the
    sorted bucket. Only one bucket's items are held."""

    def process(self, element: tuple, offsets: dict) -> Iterator[tuple]:
        bucket, items = element
        for n, (files, study, accession) in enumerate(sorted(items), start=offsets[bucket] + 1):
            yield study, accession, (n, tuple(files))


class NumberRows(beam.PTransform):
    """(bucket, item) pairs -> (study, accession, (n, references)) numbered 1..n in item order, without one
    list of every item: items are ((references…), study, accession), and buckets must be consecutive runs of
    the sorted items, ordered as their keys (listing units, studies)."""

    def expand(self, keyed):
        offsets = (
            keyed
            | "One" >> beam.MapTuple(lambda bucket, _: (bucket, 1))
            | "PerBucket" >> beam.CombinePerKey(sum)
            | "Counts" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(_offsets)
        )
        return (
            keyed
            | "ByBucket" >> beam.GroupByKey()
            | "Number" >> beam.ParDo(_NumberedRows(), beam.pvalue.AsSingleton(offsets))
        )


def _one_report(column: str, value: str, reports) -> dict | None:
    """The report of one key (None without one); two different reports under it fail the step, naming them
    (check_reports refuses such a file at start-up; this holds for a file changed since, or the Python API)."""
    found = None
    for n, entry in sorted(reports):
        if found is None:
            found = (n, entry)
        elif entry != found[1]:
            raise ValueError(f"--reports: {_repeat_message(column, value, found[0], n)}")
    return found[1] if found else None


def _by_study(item: tuple) -> Iterator:
    """A numbered item keyed by its study UID for the first join; one without a study UID goes straight on."""
    study, accession, numbered = item
    if study:
        yield study, (accession, numbered)
    else:
        yield beam.pvalue.TaggedOutput("unmatched", (accession, numbered))


def _study_joined(element: tuple) -> Iterator:
    """(study UID, {rows, reports}) -> finished rows, or (accession, numbered) for the accession join."""
    study, groups = element
    report = _one_report(REPORT_KEYS[0], study, groups["reports"])
    for accession, numbered in groups["rows"]:
        if report is not None:
            yield _row(numbered, report)
        else:
            yield beam.pvalue.TaggedOutput("unmatched", (accession, numbered))


def _by_accession(item: tuple) -> Iterator:
    """(accession, numbered) keyed for the second join; one without an accession number is finished, textless."""
    accession, numbered = item
    if accession:
        yield accession, numbered
    else:
        yield beam.pvalue.TaggedOutput("finished", _row(numbered, None))


def _accession_joined(element: tuple) -> Iterator[dict]:
    accession, groups = element
    report = _one_report(REPORT_KEYS[1], accession, groups["reports"])
    for numbered in groups["rows"]:
        yield _row(numbered, report)


class JoinReports(beam.PTransform):
    """(study, accession, (n, references)) -> manifest-like rows whose text and prompt come from the reports
    file: its row with the item's StudyInstanceUID, else the one with its AccessionNumber, else none (empty).

    The file is read as a PCollection (streamed by one worker) and joined with two CoGroupByKeys, by study
    UID, then by accession number for what the first left unmatched: a step holds one key's rows and
    reports (a study), never the file. Items without the identifier skip the join (no hot empty key)."""

    def __init__(self, reports: str):
        super().__init__()
        self.reports = reports

    def expand(self, numbered):
        if not self.reports:
            return numbered | "NoReports" >> beam.MapTuple(lambda _s, _a, item: _row(item, None))
        p = numbered.pipeline
        reports = (
            p
            | "ReportsFile" >> beam.Create([self.reports])
            | "ReadReports" >> beam.FlatMap(_keyed_reports).with_outputs(*REPORT_KEYS)
        )
        first = numbered | "ByStudy" >> beam.FlatMap(_by_study).with_outputs("unmatched", main="keyed")
        study = (
            {"rows": first.keyed, "reports": reports[REPORT_KEYS[0]]}
            | "JoinStudy" >> beam.CoGroupByKey()
            | "StudyRows" >> beam.FlatMap(_study_joined).with_outputs("unmatched", main="rows")
        )
        second = (
            (first.unmatched, study.unmatched)
            | "Unmatched" >> beam.Flatten()
            | "ByAccession" >> beam.FlatMap(_by_accession).with_outputs("finished", main="keyed")
        )
        accession = {"rows": second.keyed, "reports": reports[REPORT_KEYS[1]]} | "JoinAccession" >> beam.CoGroupByKey()
        return (
            study.rows,
            second.finished,
            accession | "AccessionRows" >> beam.FlatMap(_accession_joined),
        ) | "Joined" >> beam.Flatten()


class DiscoverRows(beam.PTransform):
    """config -> rows: a paged DICOMweb search, or a folder/prefix listed per sub-folder in parallel
    with headers read in parallel and grouped by series in the pipeline; one row per series or per
    instance, numbered in reference order."""

    def __init__(self, config: Config, per_series: bool):
        super().__init__()
        self.config, self.per_series = config, per_series

    def expand(self, p):
        cfg, per_series = self.config, self.per_series
        level = "series" if per_series else "instances"
        if cfg.dicomweb_url:
            queries = date_split(parse_query(cfg.query), DATE_SPLITS)
            found = (
                p
                | "Queries" >> beam.Create(queries)
                | "SpreadQueries" >> beam.Reshuffle()
                | "Search" >> beam.FlatMap(lambda query: _dicomweb_items(cfg, level, query))
            )
            if len(queries) > 1:  # an item with no StudyDate may come from every sub-range
                found = found | "Once" >> beam.Distinct()
            keyed = found | "ByStudy" >> beam.Map(_study_bucket, cfg.dicomweb_url)
            return keyed | "Rows" >> NumberRows() | "Reports" >> JoinReports(cfg.reports)
        units = p | "Prefix" >> beam.Create([folder_prefix(cfg.input)]) | "Units" >> beam.FlatMap(listing_units)
        starts = units | "Starts" >> beam.Map(lambda u: u.start) | "AllStarts" >> beam.combiners.ToList()
        keyed = (
            units
            | "SpreadUnits" >> beam.Reshuffle()
            | "List" >> beam.FlatMap(_list_unit)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Headers" >> beam.FlatMap(_file_header)
            | "BySeries" >> beam.GroupByKey()
            | "Items" >> beam.FlatMap(_series_items, per_series)
            | "ByUnit" >> beam.Map(_unit_of, beam.pvalue.AsSingleton(starts | "Sorted" >> beam.Map(sorted)))
        )
        return keyed | "Rows" >> NumberRows() | "Reports" >> JoinReports(cfg.reports)


def is_folder_input(path: str) -> bool:
    """--input names a folder/prefix (discovery) rather than a manifest file."""
    return path.endswith("/") or ("://" not in path and os.path.isdir(path))


def folder_prefix(path: str) -> str:
    """The folder to list, without its trailing '/': a local one absolute, so that the listed paths
    are absolute and are used as they are (never joined to the folder a second time)."""
    if "://" not in path:
        path = os.path.abspath(path)
    return path.rstrip("/")
