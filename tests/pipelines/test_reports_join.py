"""--reports joined to discovered data in the pipeline (a CoGroupByKey by study UID, then one by accession
number), never loaded whole by a worker: the rows, their numbers and texts are those of a dict lookup over
the whole file (study UID first, then accession number), in-process and on 2 worker processes."""

import csv
import dataclasses
import glob
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from medprep.pipelines.config import Config
from medprep.pipelines.io import discovery
from medprep.pipelines.io.discovery import DiscoverRows
from medprep.pipelines.io.manifest import raw_rows
from medprep.samples import write_series

UID = "1.2.826.0.1.3680043.8.498.{}"


def _study(st: int) -> str:
    return UID.format(100 + st)


def _accession(st: int) -> str:
    return "" if st % 3 == 0 else f"ACC{st}"  # studies 0, 3, 6 have no accession number


REPORTS = [
    {"study_uid": _study(0), "text": "R-uid-0", "prompt": "P0"},  # by UID (no accession in the files)
    {"accession_number": "ACC1", "text": "R-acc-1"},  # by accession only
    {"study_uid": _study(2), "text": "R-uid-2"},  # the UID wins over ...
    {"accession_number": "ACC2", "text": "R-acc-2"},  # ... the accession match
    {"study_uid": "1.9.9", "accession_number": "ACC4", "text": "R-acc-4"},  # another study, same accession
    {"study_uid": _study(5), "text": ""},  # an empty report under the UID still wins
    {"accession_number": "ACC5", "text": "R-acc-5"},
    {"accession_number": "ACC8", "prompt": "only a prompt"},
    {"study_uid": "not-a-study", "text": "matches nothing"},
    {"text": "no key at all"},
]  # studies 3, 6 (no accession) and 7 match nothing: empty text


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """18 two-slice series, two per study (9 studies), in three sub-folders and the root."""
    root = tmp_path_factory.mktemp("joined") / "in"
    for s in range(18):
        st = s // 2
        folder = root if s < 2 else root / "abc"[s % 3] / f"st{st}"
        extra = {"StudyInstanceUID": _study(st), "AccessionNumber": _accession(st)}
        write_series(str(folder / f"s{s}"), 2, series=s, patient=st, values=lambda k: np.full((4, 4), k), extra=extra)
    return str(root)


def _write_reports(folder, fmt: str, rows: list[dict]) -> str:
    path = folder / f"reports.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["study_uid", "accession_number", "text", "prompt"])
            writer.writeheader()
            writer.writerows(rows)
    return str(path)


def _dict_join_rows(prefix: str, reports: str, per_series: bool) -> list[dict]:
    """The rows as discovery made them before the join: every report in one dict ('study:<uid>' /
    'acc:<accession>', a later line replacing an earlier one), looked up by study UID, else accession."""
    table: dict = {}
    for raw in raw_rows(reports):
        entry = {"text": str(raw.get("text") or ""), "prompt": str(raw.get("prompt") or "")}
        if raw.get("study_uid"):
            table[f"study:{raw['study_uid']}"] = entry
        if raw.get("accession_number"):
            table[f"acc:{raw['accession_number']}"] = entry
    series: dict = {}
    for path in sorted(glob.glob(prefix + "/**", recursive=True)):
        for uid, member in discovery._file_header(path):
            series.setdefault(uid, []).append(member)
    items = []
    for members in series.values():
        members = sorted(members)
        if per_series:
            items.append((tuple(m[0] for m in members), members[0][1], members[0][2]))
        else:
            items += [((m[0],), m[1], m[2]) for m in members]
    rows = []
    for n, (files, study, accession) in enumerate(sorted(items), start=1):
        report = table.get(f"study:{study}") or table.get(f"acc:{accession}") or {"text": "", "prompt": ""}
        rows.append(
            {
                "row": n,
                "id": "",
                "images": list(files),
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
        )
    return rows


def _discovered(config: Config, per_series: bool, out, options: PipelineOptions | None = None) -> list[str]:
    """The discovered rows as JSON lines (sorted keys), in row order."""
    if options is None:
        p = beam.Pipeline(runner=FnApiRunner())
    else:
        p = beam.Pipeline(options=options)
    with p:
        (
            p
            | DiscoverRows(config, per_series)
            | beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | beam.io.WriteToText(str(out / "rows"))
        )
    lines = [line for f in sorted(glob.glob(str(out / "rows*"))) for line in open(f).read().splitlines()]
    return sorted(lines, key=lambda line: json.loads(line)["row"])


def _lines(rows: list[dict]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("per_series", [True, False])
def test_joined_rows_are_those_of_one_dict_of_every_report(tree, tmp_path, fmt, per_series):
    reports = _write_reports(tmp_path, fmt, REPORTS)
    config = dataclasses.replace(Config(), input=tree + "/", reports=reports)
    rows = _discovered(config, per_series, tmp_path)
    expected = _lines(_dict_join_rows(tree, reports, per_series))
    assert rows == expected
    texts = {json.loads(r)["text"] for r in rows}
    assert texts == {"R-uid-0", "R-acc-1", "R-uid-2", "R-acc-4", ""}
    by_text = {t: sum(json.loads(r)["text"] == t for r in rows) for t in texts}
    per_study = 2 if per_series else 4  # rows of one study: its 2 series, or their 4 files
    assert by_text["R-acc-4"] == per_study and by_text["R-uid-2"] == per_study
    assert sum(json.loads(r)["prompt"] == "only a prompt" for r in rows) == per_study


def test_joined_rows_on_two_worker_processes(tree, tmp_path):
    reports = _write_reports(tmp_path, "jsonl", REPORTS)
    config = dataclasses.replace(Config(), input=tree + "/", reports=reports)
    options = PipelineOptions(
        ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    rows = _discovered(config, True, tmp_path, options)
    assert rows == _lines(_dict_join_rows(tree, reports, True))


# A key given two different reports: refused at start-up, naming it; the join refuses it too -------------

CLASH = [
    {"study_uid": _study(0), "text": "first"},
    {"accession_number": "ACC1", "text": "R-acc-1"},
    {"study_uid": _study(0), "text": "first"},  # the same report again: fine
    {"accession_number": "ACC4", "text": "one"},
    {"study_uid": _study(0), "text": "second"},  # study 0's report differs: refused
]


def test_a_key_with_two_different_reports_is_refused_at_startup(tree, tmp_path, capsys):
    from medprep.pipelines.cli.main import main

    reports = _write_reports(tmp_path, "jsonl", CLASH)
    code = main(["volumes", "--input", tree, "--reports", reports, "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"medprep: error: --reports: cannot read {reports}: study_uid '{_study(0)}' on row 5 repeats row 1 "
        "with another text or prompt (one report per key)\n"
    )
    assert not (tmp_path / "o").exists()
    discovery.check_reports(_write_reports(tmp_path, "csv", CLASH[:4]))  # repeats of one report pass
    clash = _write_reports(tmp_path, "csv", [CLASH[3], {"accession_number": "ACC4", "prompt": "one"}])
    with pytest.raises(ValueError, match="accession_number 'ACC4' on row 2 repeats row 1"):
        discovery.check_reports(clash)  # the same words as a prompt instead of a text are another report


def test_digests_that_collide_are_confirmed_on_the_values(tmp_path, monkeypatch):
    """Every key's digest made equal: the second read compares the real values and finds no repeat."""
    monkeypatch.setattr(discovery, "_key_digest", lambda column, value: 7)
    discovery.check_reports(_write_reports(tmp_path, "jsonl", REPORTS))
    with pytest.raises(ValueError, match=f"study_uid '{_study(0)}' on row 5 repeats row 1"):
        discovery.check_reports(_write_reports(tmp_path, "jsonl", CLASH))


def test_the_join_refuses_a_key_with_two_different_reports(tree, tmp_path):
    """A file that passed the start-up check and changed since (or the Python API, which has none)."""
    config = dataclasses.replace(Config(), input=tree + "/", reports=_write_reports(tmp_path, "jsonl", CLASH))
    with pytest.raises(Exception, match=f"--reports: study_uid '{_study(0)}' on row 5 repeats row 1"):
        _discovered(config, True, tmp_path)
    same = _write_reports(tmp_path, "csv", CLASH[:4])
    rows = _discovered(dataclasses.replace(config, reports=same), True, tmp_path / "same")
    assert rows == _lines(_dict_join_rows(tree, same, True))


def test_the_startup_check_holds_digests_not_reports(tmp_path):
    """4,000 rows of 4 kB reports (16 MB, both keys each): the check's peak is the file's digests (16 bytes
    a key) and a few rows being parsed, under 1 MB, where a dict of the reports held the whole file."""
    import tracemalloc

    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        for n in range(4000):
            text = f"report {n} " + "x" * 4096
            fh.write(json.dumps({"study_uid": f"1.2.{n}", "accession_number": f"A{n}", "text": text}) + "\n")
    tracemalloc.start()
    discovery.check_reports(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_reports_are_joined_in_the_graph_not_loaded_by_a_worker(tmp_path):
    config = dataclasses.replace(Config(), input=str(tmp_path) + "/", reports=str(tmp_path / "r.csv"))
    p = beam.Pipeline(runner=FnApiRunner())
    p | DiscoverRows(config, per_series=True)
    labels: dict = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels[node.full_label] = node

        def visit_transform(self, node):
            labels[node.full_label] = node

    p.visit(Visitor())
    assert isinstance(labels["DiscoverRows/Reports/JoinStudy"].transform, beam.CoGroupByKey)
    assert isinstance(labels["DiscoverRows/Reports/JoinAccession"].transform, beam.CoGroupByKey)
    # the only side inputs of discovery are the listing units' starts and the buckets' offsets (small;
    # InjectDefault is how Beam's global combines give an empty input its default)
    sides = sorted(k for k, n in labels.items() if n.side_inputs and not k.endswith("/InjectDefault"))
    assert sides == ["DiscoverRows/ByUnit", "DiscoverRows/Rows/Number"]
