"""`medprep verify OUT`: prove an output folder is complete, consistent and free of source identifiers.

Checks: summary.json reconciles (inputs = inputs with examples + error lines); every listed
shard exists, opens and holds the listed number of records; every record matches the schema,
decodes, has one image_info per image and images of the recorded size; both formats hold the
same examples; example ids are unique; no patient spans two splits; no identifier value from
the source DICOM headers appears in any record text, image_info, errors/ or summary.json.
"""
from __future__ import annotations

import io
import json
import os
from collections import defaultdict

import pydicom
from PIL import Image

from pipelines.outputs import join
from schemas.fields import validate_record
from schemas.readers import _read_arrayrecord, _read_parquet

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                "OperatorsName", "ReferringPhysicianName", "OtherPatientIDs", "PerformingPhysicianName")
MIN_PHI_LENGTH = 4   # shorter values ("1", "M") would match everywhere


def _source_identifiers(refs: set[str], manifest: str) -> dict[str, str]:
    """value -> 'Keyword in file' for every identifier in the headers of the DICOM sources (local or gs://)."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.manifest import resolve_ref

    found: dict[str, str] = {}
    for ref in sorted(refs):
        path = resolve_ref(ref, manifest) if manifest else ref
        try:
            with FileSystems.open(path, compression_type="uncompressed") as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        except Exception:  # missing, a folder, or not DICOM: nothing to scan
            continue
        for keyword in PHI_KEYWORDS:
            value = ds.get(keyword)
            values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
            for v in values:
                text = str(v or "").strip()
                if len(text) >= MIN_PHI_LENGTH:
                    found.setdefault(text, f"{keyword} of {os.path.basename(path)}")
                    if keyword.endswith("Name") and "^" in text:
                        for part in text.split("^"):
                            if len(part) >= MIN_PHI_LENGTH:
                                found.setdefault(part, f"{keyword} part of {os.path.basename(path)}")
    return found


def _listed_files(summary: dict, output_dir: str, key: str, what: str, problems: list[str]):
    """(entry, local path) of summary.json's files that have `key` and exist; a missing one is a problem."""
    for f in summary["files"]:
        if key not in f:
            continue
        path = join(output_dir, f["path"])
        if os.path.isfile(path):
            yield f, path
        else:
            problems.append(f"missing {what} {f['path']}")


def verify(output_dir: str, phi_scan: bool = True) -> tuple[list[str], dict]:
    """(problems, facts) for an output folder (local or gs://); no problems means it verifies."""
    if "://" in output_dir:
        import shutil

        from pipelines.outputs import localize

        folder = localize(output_dir)
        try:
            return verify(folder, phi_scan)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    problems: list[str] = []
    summary_path = join(output_dir, "summary.json")
    if not os.path.isfile(summary_path):
        return [f"no summary.json in {output_dir}: the run did not complete"], {}
    summary = json.load(open(summary_path, encoding="utf-8"))
    inputs, ok, nerr = summary["inputs"], summary["inputs_with_examples"], summary["errors"]
    if inputs != ok + nerr or not summary.get("reconciled"):
        problems.append(f"summary does not reconcile: inputs {inputs} != inputs with examples {ok} + errors {nerr}")
    error_lines = []
    texts: list[tuple[str, str]] = [("summary.json", open(summary_path, encoding="utf-8").read())]
    for f, path in _listed_files(summary, output_dir, "lines", "error file", problems):
        body = open(path, encoding="utf-8").read()
        texts.append((f["path"], body))
        for n, line in enumerate(body.splitlines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and {"ref", "row", "stage", "error", "message"} <= set(entry):
                error_lines.append(entry)
            else:
                problems.append(f"{f['path']} line {n} is not a valid error line")
    if len(error_lines) != nerr:
        problems.append(f"summary counts {nerr} errors, errors/ holds {len(error_lines)} lines")
    by_format: dict[str, dict[str, dict]] = defaultdict(dict)
    images_by_format: dict[str, int] = defaultdict(int)
    for f, path in _listed_files(summary, output_dir, "format", "shard", problems):
        reader = _read_arrayrecord if f["format"] == "arrayrecord" else _read_parquet
        count = 0
        try:
            for rec in reader(path):
                count += 1
                _check_record(rec, f, problems, by_format[f["format"]])
                images_by_format[f["format"]] += len(rec["images"])
                texts.append((f["path"], "\n".join([v for k, v in rec.items() if isinstance(v, str)] +
                                                    rec["image_info"] + rec["box_labels"] + rec["source"])))
        except Exception as exc:
            problems.append(f"{f['path']}: cannot read record {count}: {type(exc).__name__}: {exc}")
        if count != f["records"]:
            problems.append(f"{f['path']}: summary lists {f['records']} records, the shard holds {count}")
    formats = list(by_format)
    for fmt in formats:
        if len(by_format[fmt]) != summary["examples"]:
            problems.append(f"{fmt}: {len(by_format[fmt])} distinct examples, summary says {summary['examples']}")
        if images_by_format[fmt] != summary["images"]:
            problems.append(f"{fmt}: {images_by_format[fmt]} images, summary says {summary['images']}")
    if len(formats) == 2 and set(by_format[formats[0]]) != set(by_format[formats[1]]):
        problems.append("ArrayRecord and Parquet hold different examples")
    splits_of: dict[str, set] = defaultdict(set)
    for rec in (by_format[formats[0]].values() if formats else []):
        splits_of[rec["patient_key"]].add(rec["split"])
    crossing = [k for k, s in splits_of.items() if len(s) > 1]
    if crossing:
        problems.append(f"{len(crossing)} patient(s) appear in more than one split")
    phi_hits = 0
    if phi_scan:
        sources = {s for recs in by_format.values() for r in recs.values() for s in r["source"]}
        sources |= {e["ref"] for e in error_lines}
        identifiers = _source_identifiers(sources, summary["config"].get("input", ""))
        for where, text in texts:
            for value, what in identifiers.items():
                if value in text:
                    phi_hits += 1
                    problems.append(f"identifier found in {where}: {what}")
    facts = {"examples": summary["examples"], "errors": nerr, "inputs": inputs, "formats": formats,
             "shards": sum(1 for f in summary["files"] if "format" in f), "phi_values_checked":
             len(identifiers) if phi_scan else None, "phi_hits": phi_hits}
    return problems, facts


def _check_record(rec: dict, shard: dict, problems: list[str], seen: dict) -> None:
    where = f"{shard['path']} example {rec.get('example_id', '?')}"
    try:
        validate_record({k: rec[k] for k in rec if k in rec})
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return
    if rec["example_id"] in seen:
        problems.append(f"{where}: duplicate example_id")
    seen[rec["example_id"]] = rec
    if rec["split"] != shard["split"]:
        problems.append(f"{where}: split {rec['split']} in a {shard['split']} shard")
    if len(rec["images"]) != len(rec["image_info"]) or not rec["images"]:
        problems.append(f"{where}: {len(rec['images'])} images but {len(rec['image_info'])} image_info entries")
        return
    for i, (data, info_json) in enumerate(zip(rec["images"], rec["image_info"])):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            out = json.loads(info_json)["pad_resize"]["out"]
            if img.size != (out, out):
                problems.append(f"{where}: image {i} is {img.size}, image_info says {out}x{out}")
        except Exception as exc:
            problems.append(f"{where}: image {i} does not decode: {type(exc).__name__}: {exc}")


def main(argv: list[str]) -> int:
    """CLI entry: prints the problems (exit 1) or a one-line OK (exit 0)."""
    import argparse

    ap = argparse.ArgumentParser(prog="medprep verify", description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", help="a medprep output folder")
    ap.add_argument("--no_phi_scan", action="store_true", help="skip scanning for source header identifiers")
    args = ap.parse_args(argv)
    problems, facts = verify(args.output_dir, not args.no_phi_scan)
    for p in problems:
        print("FAIL", p)
    if problems:
        print(f"{args.output_dir}: {len(problems)} problem(s)")
        return 1
    print(f"OK {args.output_dir}: {json.dumps(facts)}")
    return 0
