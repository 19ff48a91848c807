"""Rows without a manifest: discover series/instances on a DICOMweb server or under a folder/prefix.

Discovery runs inside the pipeline (not on the launcher). Each discovered series (volumes) or
instance (images) becomes a row like a manifest row; its text comes from a reports file
(CSV/JSONL/Parquet with `study_uid` and/or `accession_number`, `text`, optional `prompt`)
joined by StudyInstanceUID, else AccessionNumber. Identifiers are only used for the join.
"""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.config import Config
from medprep.pipelines.io.manifest import raw_rows
from medprep.pipelines.io.sources.dicomweb import client_for
from medprep.pipelines.io.sources.files import open_input
from medprep.transforms.dicom_io import read_header
from medprep.transforms.dicomweb_ref import DicomWebRef

STUDY, SERIES, SOP, ACCESSION = "0020000D", "0020000E", "00080018", "00080050"


def parse_query(text: str) -> dict:
    """'Modality=CT&StudyDate=20200101-20201231' (or comma-separated) -> QIDO filters."""
    out = {}
    for part in (p for p in text.replace("&", ",").split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"query term {part!r} is not Attribute=value")
        out[key.strip()] = value.strip()
    return out


def read_reports(path: str) -> dict:
    """'study:<uid>' / 'acc:<accession>' -> {'text', 'prompt'} from a reports file."""
    reports: dict = {}
    if not path:
        return reports
    for raw in raw_rows(path):
        entry = {"text": str(raw.get("text") or ""), "prompt": str(raw.get("prompt") or "")}
        if raw.get("study_uid"):
            reports[f"study:{raw['study_uid']}"] = entry
        if raw.get("accession_number"):
            reports[f"acc:{raw['accession_number']}"] = entry
    return reports


def _json_value(item: dict, tag: str) -> str:
    value = (item.get(tag) or {}).get("Value") or [""]
    return str(value[0])


def _row(n: int, ref: str, study: str, accession: str, reports: dict) -> dict:
    report = reports.get(f"study:{study}") or reports.get(f"acc:{accession}") or {"text": "", "prompt": ""}
    return {
        "row": n,
        "id": "",
        "images": [ref],
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


def dicomweb_rows(config: Config, level: str):
    """QIDO-RS search -> one row per series (level 'series') or instance ('instances'), in UID order."""
    client = client_for(config.dicomweb_url)
    found = []
    for item in client.search(level, parse_query(config.query)):
        study, series = _json_value(item, STUDY), _json_value(item, SERIES)
        web = DicomWebRef(config.dicomweb_url, study, series, _json_value(item, SOP) if level == "instances" else None)
        found.append((web.url(), study, _json_value(item, ACCESSION)))
    reports = read_reports(config.reports)
    for n, (ref, study, accession) in enumerate(sorted(found), start=1):
        yield _row(n, ref, study, accession, reports)


def _file_header(path: str):
    try:
        with open_input(path) as fh:  # regular files only: a FIFO in the folder is not waited on
            ds = read_header(fh)
    except Exception:
        return  # not DICOM: not discovered
    if "SeriesInstanceUID" in ds and "SOPClassUID" in ds:
        study, accession = str(ds.get("StudyInstanceUID", "")), str(ds.get("AccessionNumber", ""))
        yield (str(ds.SeriesInstanceUID), (path, study, accession))


def _folder_rows(groups: list, config: Config, per_series: bool):
    reports = read_reports(config.reports)
    items = []
    for _, members in groups:
        members = sorted(members)
        if per_series:
            items.append(([m[0] for m in members], members[0][1], members[0][2]))
        else:
            items += [([m[0]], m[1], m[2]) for m in members]
    for n, (files, study, accession) in enumerate(sorted(items), start=1):
        row = _row(n, files[0], study, accession, reports)
        row["images"] = files
        yield row


class DiscoverRows(beam.PTransform):
    """config -> rows: DICOMweb search or a folder/prefix listing, grouped per series or per instance."""

    def __init__(self, config: Config, per_series: bool):
        super().__init__()
        self.config, self.per_series = config, per_series

    def expand(self, p):
        cfg, per_series = self.config, self.per_series
        level = "series" if per_series else "instances"
        if cfg.dicomweb_url:
            return p | "Query" >> beam.Create([None]) | "Search" >> beam.FlatMap(lambda _: dicomweb_rows(cfg, level))
        prefix = folder_prefix(cfg.input)
        return (
            p
            | "Prefix" >> beam.Create([prefix + "/**"])
            | "List" >> beam.FlatMap(lambda pattern: [m.path for m in FileSystems.match([pattern])[0].metadata_list])
            | "SpreadFiles" >> beam.Reshuffle()
            | "Headers" >> beam.FlatMap(_file_header)
            | "BySeries" >> beam.GroupByKey()
            | "All" >> beam.combiners.ToList()
            | "Rows" >> beam.FlatMap(lambda groups: _folder_rows(groups, cfg, per_series))
        )


def is_folder_input(path: str) -> bool:
    """--input names a folder/prefix (discovery) rather than a manifest file."""
    return path.endswith("/") or ("://" not in path and os.path.isdir(path))


def folder_prefix(path: str) -> str:
    """The folder to list, without its trailing '/': a local one absolute, so that the listed paths
    are absolute and are used as they are (never joined to the folder a second time)."""
    if "://" not in path:
        path = os.path.abspath(path)
    return path.rstrip("/")
