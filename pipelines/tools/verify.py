"""`medprep verify OUT`: prove an output folder is complete, consistent and free of source identifiers.

Checks: summary.json reconciles (inputs = inputs with examples + error lines); every listed
shard exists, opens and holds the listed number of records; every record matches the schema,
decodes, has one image_info per image and images of the recorded size; both formats hold the
same examples; example ids are unique; no patient spans two splits; no identical image (same
decoded pixels) sits in two splits under different patient keys; the run checked every record
against its own headers (summary.json `records_checked_for_identifiers`, `identifier_hits`); no
identifier value from the manifest (patient ids, path components, URL passwords) appears in any
record field, image_info, errors/ or summary.json, and no record holds an identifier pattern
(identifier_scan.TEXT_PATTERNS). `--near_duplicates` also lists pairs of perceptually similar
images (64-bit DCT pHash) in different splits under different patient keys: findings to review.

Bounded memory, where the data is: shards are streamed record by record through Beam's FileSystems
(output_reader), local or gs://, and only small per-record digests are kept (an id, a split code, a
patient number; per image a 16-byte pixel digest and the 64-bit pHash). Source files are never
opened: the manifest is the only input read.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from PIL import Image

from medprep.pipelines.io.outputs import join
from medprep.pipelines.records.identifiers import IDENTIFIER_HIT, IdentifierSet, record_strings, worth_checking
from medprep.pipelines.tools.identifier_scan import KINDS, Inputs, Scan, path_components, url_credentials
from medprep.pipelines.tools.image_index import (
    FLAT_STD,
    MAX_NEAR_PAIRS,
    SPLIT_ORDER,
    ImageIndex,
    describe_images,
    phash,
    pixel_digest,
    split_rank,
)
from medprep.pipelines.tools.output_reader import is_file, iter_lines, iter_shard, read_summary
from medprep.schemas.fields import validate_record
from medprep.transforms.dicom_io import PHI_KEYWORDS

# Re-exported: the names verify has always offered (tests and tools import them from here). PHI_KEYWORDS are the
# header keywords the pipeline checks each record against (records/identifiers.py).
__all__ = [
    "FLAT_STD",
    "KINDS",
    "MAX_NEAR_PAIRS",
    "PHI_KEYWORDS",
    "SPLIT_ORDER",
    "IdentifierSet",
    "ImageIndex",
    "describe_images",
    "path_components",
    "phash",
    "pixel_digest",
    "record_strings",
    "url_credentials",
    "verify",
    "worth_checking",
]

DEFAULT_PHASH_DISTANCE = 4  # re-encoded or slightly resized copies differ by 0-2 bits; unrelated images by ~32
MAX_PHASH_DISTANCE = 16  # beyond this the pigeonhole blocks get too small to search quickly
MAX_PROBLEMS = 1000  # problems listed one by one; beyond, they are counted (memory stays bounded)
ERROR_FIELDS = frozenset({"ref", "row", "stage", "error", "message"})


class Problems(list[str]):
    """A list of problems that lists at most MAX_PROBLEMS and counts the rest (`unlisted`)."""

    def __init__(self) -> None:
        super().__init__()
        self.unlisted = 0

    def append(self, problem: str) -> None:
        if len(self) < MAX_PROBLEMS:
            super().append(problem)
        else:
            self.unlisted += 1

    def extend(self, problems: Any) -> None:
        for p in problems:
            self.append(p)

    def listed(self) -> list[str]:
        return list(self) + ([f"… and {self.unlisted} more problem(s)"] if self.unlisted else [])


class Examples:
    """Per example of the first format read only a number, a split code and a patient number; each other
    format marks the examples it holds in a byte map. Finds duplicate ids, formats that disagree and
    patients in two splits over any number of records."""

    def __init__(self, primary: str):
        self.primary = primary
        self.number: dict[str, int] = {}  # example_id -> number (primary format)
        self.split_names: list[str] = []
        self.patients: dict[str, int] = {}
        self.patient_splits = bytearray()  # patient no -> bit mask of the split codes it has
        self.marks: dict[str, bytearray] = {}  # other format -> per number 1 when held
        self.unknown: dict[str, set[str]] = defaultdict(set)  # other format -> ids the primary lacks
        self.distinct: dict[str, int] = defaultdict(int)
        self.images: dict[str, int] = defaultdict(int)

    def _patient_in(self, patient_key: str, split: str) -> None:
        if split not in self.split_names:
            self.split_names.append(split)
        patient = self.patients.setdefault(patient_key, len(self.patients))
        if patient == len(self.patient_splits):
            self.patient_splits.append(0)
        self.patient_splits[patient] |= 1 << min(self.split_names.index(split), 7)

    def add(self, fmt: str, example_id: str, split: str, patient_key: str) -> bool:
        """Register one record of `fmt`; False when that format already held its example_id."""
        if fmt == self.primary:
            self._patient_in(patient_key, split)
            if example_id in self.number:
                return False
            self.number[example_id] = len(self.number)
        else:
            number = self.number.get(example_id)
            if number is None:
                if example_id in self.unknown[fmt]:
                    return False
                self.unknown[fmt].add(example_id)
            else:
                marks = self.marks.setdefault(fmt, bytearray(len(self.number)))
                if number >= len(marks):  # a primary shard listed after this format's: grow the map
                    marks.extend(bytes(number + 1 - len(marks)))
                if marks[number]:
                    return False
                marks[number] = 1
        self.distinct[fmt] += 1
        return True

    def same_examples(self, fmt: str) -> bool:
        """`fmt` holds exactly the primary format's examples."""
        marks = self.marks.get(fmt, bytearray())
        return not self.unknown[fmt] and marks.count(1) == len(self.number)

    def patients_in_two_splits(self) -> int:
        return sum(1 for mask in self.patient_splits if mask & (mask - 1))


def _listed_files(summary: dict, output_dir: str, key: str, what: str, problems: Problems) -> Iterator[tuple]:
    """(entry, path) of summary.json's files that have `key` and exist as regular files (never a FIFO or
    device: they are not opened); a missing one is a problem."""
    for f in summary["files"]:
        if key not in f:
            continue
        path = join(output_dir, f["path"])
        if is_file(path):
            yield f, path
        else:
            problems.append(f"missing {what} {f['path']}")


def _error_lines(summary: dict, output_dir: str, problems: Problems) -> Iterator[tuple[str, int, dict | None]]:
    """(file, line number, entry or None when the line is not a valid error line), streamed."""
    for f, path in _listed_files(summary, output_dir, "lines", "error file", problems):
        for n, line in enumerate(iter_lines(path), start=1):
            if not line and n > 1:  # a trailing newline is not a line
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            valid = isinstance(entry, dict) and ERROR_FIELDS <= set(entry)
            yield f["path"], n, entry if valid else None


def _count_error_lines(summary: dict, output_dir: str, problems: Problems) -> tuple[int, int, set[int]]:
    """(valid lines, lines of records refused for an identifier, manifest rows named) over errors/; invalid lines
    are problems."""
    lines, hits, rows = 0, 0, set()
    for file, n, entry in _error_lines(summary, output_dir, problems):
        if entry is None:
            problems.append(f"{file} line {n} is not a valid error line")
            continue
        lines += 1
        hits += entry["stage"] == "privacy" and str(entry["message"]).startswith(IDENTIFIER_HIT)
        if isinstance(entry["row"], int):
            rows.add(entry["row"])
    return lines, hits, rows


def _identifier_check(summary: dict, hit_lines: int) -> list[str]:
    """Problems with the pipeline's own check of each record against its headers, from summary.json."""
    checked, examples = summary.get("records_checked_for_identifiers"), summary["examples"]
    if checked is None:
        return [
            "summary.json does not say that the run checked its records against their own headers "
            "(records_checked_for_identifiers): made by an older medprep; rerun it, or pass --no_phi_scan"
        ]
    out = []
    if checked != examples:
        out.append(
            f"{examples - checked} record(s) not checked against their own headers: summary.json counts "
            f"{checked} checked of {examples} examples"
        )
    if summary.get("identifier_hits", 0) != hit_lines:
        out.append(
            f"summary.json counts {summary.get('identifier_hits', 0)} identifier hit(s), errors/ holds "
            f"{hit_lines} such line(s)"
        )
    return out


def _scan_identifiers(summary: dict, output_dir: str, rows: set[int], problems: Problems) -> Scan:
    """Collect the manifest's values, then look for them in summary.json and errors/ (a second, streamed pass)."""
    inputs = Inputs(summary)
    unread = inputs.collect(rows)
    if unread:
        problems.append(unread)
    scan = Scan(inputs)
    scan.summary(summary)
    for file, n, entry in _error_lines(summary, output_dir, Problems()):
        if entry is not None:
            scan.error_line(file, n, entry)
    return scan


def _check_record(rec: dict, shard: dict, problems: Problems, examples: Examples, index: ImageIndex | None) -> bool:
    """Schema, uniqueness, split and image checks of one record; `index` (for one format) takes the hashes of
    its images. False when the record does not match the schema."""
    where = f"{shard['path']} example {rec.get('example_id', '?')}"
    try:
        validate_record(rec)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return False
    if not examples.add(shard["format"], rec["example_id"], rec["split"], rec["patient_key"]):
        problems.append(f"{where}: duplicate example_id")
    if rec["split"] != shard["split"]:
        problems.append(f"{where}: split {rec['split']} in a {shard['split']} shard")
    if len(rec["images"]) != len(rec["image_info"]) or not rec["images"]:
        problems.append(f"{where}: {len(rec['images'])} images but {len(rec['image_info'])} image_info entries")
        return True
    number = index.add_record(rec["example_id"], rec["split"], rec["patient_key"]) if index is not None else None
    for i, (data, info_json) in enumerate(zip(rec["images"], rec["image_info"])):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            out = json.loads(info_json)["pad_resize"]["out"]
            if img.size != (out, out):
                problems.append(f"{where}: image {i} is {img.size}, image_info says {out}x{out}")
            if index is not None and number is not None:
                index.add_image(number, i, img)
        except Exception as exc:
            problems.append(f"{where}: image {i} does not decode: {type(exc).__name__}: {exc}")
    return True


def _check_shards(
    summary: dict, output_dir: str, problems: Problems, examples: Examples, index: ImageIndex, scan: Scan | None
) -> None:
    """Stream every listed shard (the primary format's first), record by record."""
    shards = sorted((f for f in summary["files"] if "format" in f), key=lambda f: f["format"] != examples.primary)
    for f, path in _listed_files({"files": shards}, output_dir, "format", "shard", problems):
        count = 0
        try:
            for rec in iter_shard(path, f["format"]):
                count += 1
                primary = f["format"] == examples.primary
                valid = _check_record(rec, f, problems, examples, index if primary else None)
                examples.images[f["format"]] += len(rec["images"])
                if valid and scan is not None:
                    scan.record(rec)
        except Exception as exc:
            problems.append(f"{f['path']}: cannot read record {count}: {type(exc).__name__}: {exc}")
        if count != f["records"]:
            problems.append(f"{f['path']}: summary lists {f['records']} records, the shard holds {count}")


def _dataset_problems(summary: dict, examples: Examples, index: ImageIndex) -> tuple[list[str], int]:
    """Counts against summary.json, formats against each other, patients and images across splits."""
    out = []
    formats = list(examples.distinct)
    for fmt in formats:
        if examples.distinct[fmt] != summary["examples"]:
            out.append(f"{fmt}: {examples.distinct[fmt]} distinct examples, summary says {summary['examples']}")
        if examples.images[fmt] != summary["images"]:
            out.append(f"{fmt}: {examples.images[fmt]} images, summary says {summary['images']}")
    if any(fmt != examples.primary and not examples.same_examples(fmt) for fmt in formats):
        out.append("ArrayRecord and Parquet hold different examples")
    crossing = examples.patients_in_two_splits()
    if crossing:
        out.append(f"{crossing} patient(s) appear in more than one split")
    identical = index.identical_across_splits()
    for group in identical:
        splits = sorted({s for _, _, s in group}, key=split_rank)
        out.append(
            f"identical image in splits {', '.join(splits)} under different patient keys: " + describe_images(group)
        )
    return out, len(identical)


def verify(
    output_dir: str, phi_scan: bool = True, near_duplicates: bool = False, phash_distance: int = DEFAULT_PHASH_DISTANCE
) -> tuple[list[str], dict]:
    """(problems, facts) for an output folder (local or gs://, read in place); no problems means it verifies.

    facts["near_duplicate_pairs"] (with near_duplicates) lists (bits apart, (id, image, split), (id, image,
    split)) of similar, not identical, images in different splits under different patient keys."""
    from medprep.pipelines.io.commit import read_journal
    from medprep.pipelines.io.run_output import leftover_runs

    journal = read_journal(output_dir)
    if journal is not None:  # a half-done commit: the folder holds part of one dataset
        return [
            f"a commit into {output_dir} was interrupted ({journal.phase} phase): run `medprep recover "
            f"{output_dir}` to finish it (or `--rollback` to restore the previous dataset)"
        ], {"leftover_staging": leftover_runs(output_dir)}
    summary = read_summary(output_dir)
    if summary is None:
        return [f"no summary.json in {output_dir}: the run did not complete"], {}
    problems = Problems()
    inputs, ok, nerr = summary["inputs"], summary["inputs_with_examples"], summary["errors"]
    if inputs != ok + nerr or not summary.get("reconciled"):
        problems.append(f"summary does not reconcile: inputs {inputs} != inputs with examples {ok} + errors {nerr}")
    lines, hit_lines, rows = _count_error_lines(summary, output_dir, problems)
    if lines != nerr:
        problems.append(f"summary counts {nerr} errors, errors/ holds {lines} lines")
    scan = None
    if phi_scan:
        problems.extend(_identifier_check(summary, hit_lines))
        scan = _scan_identifiers(summary, output_dir, rows, problems)
    primary = next((f["format"] for f in summary["files"] if "format" in f), "")
    examples, index = Examples(primary), ImageIndex(near_duplicates)
    _check_shards(summary, output_dir, problems, examples, index, scan)
    found, identical = _dataset_problems(summary, examples, index)
    problems.extend(found)
    problems.extend(scan.problems() if scan is not None else [])
    counts = scan.inputs.identifiers.counts() if scan is not None else None
    facts = {
        "examples": summary["examples"],
        "errors": nerr,
        "inputs": inputs,
        "formats": list(examples.distinct),
        "shards": sum(1 for f in summary["files"] if "format" in f),
        "records_checked_for_identifiers": summary.get("records_checked_for_identifiers"),
        "identifier_hits": summary.get("identifier_hits"),
        "phi_values_checked": sum(counts.values()) if counts is not None else None,
        "phi_values_by_kind": counts,
        "phi_hits": len(scan) if scan is not None else 0,
        "identical_images_across_splits": identical,
        "leftover_staging": leftover_runs(output_dir),
    }
    if near_duplicates:
        pairs, truncated = index.near_pairs(phash_distance)
        facts.update(
            near_duplicates=len(pairs),
            near_duplicates_truncated=truncated,
            phash_distance=phash_distance,
            near_duplicate_pairs=[(bits, one, two) for bits, one, two, _ in pairs],
        )
    return problems.listed(), facts


def phash_distance_option(text: str) -> int:
    """argparse type for --phash_distance: an integer 0..MAX_PHASH_DISTANCE."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PHASH_DISTANCE:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 0 to {MAX_PHASH_DISTANCE}, got {text!r}")
    return value


def add_duplicate_options(ap: Any, near_help: str) -> None:
    """--near_duplicates and --phash_distance, as verify and inspect take them."""
    ap.add_argument("--near_duplicates", action="store_true", help=near_help)
    ap.add_argument(
        "--phash_distance",
        type=phash_distance_option,
        default=DEFAULT_PHASH_DISTANCE,
        help=f"with --near_duplicates: at most this many of 64 pHash bits differ "
        f"(default {DEFAULT_PHASH_DISTANCE}, at most {MAX_PHASH_DISTANCE})",
    )


def _pipeline_of(output_dir: str) -> str:
    """summary.json's `pipeline`, or '' when it cannot be read (verify then reports that)."""
    try:
        return str((read_summary(output_dir) or {}).get("pipeline", ""))
    except Exception:  # missing or unreadable: verify() names the problem
        return ""


def main(argv: list[str]) -> int:
    """CLI entry: prints the problems (exit 1) or a one-line OK (exit 0); near-duplicates as NEAR lines."""
    import argparse

    ap = argparse.ArgumentParser(prog="medprep verify", description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", help="a medprep output folder")
    ap.add_argument(
        "--no_phi_scan",
        action="store_true",
        help="skip looking for identifiers (header values, manifest patient ids, path components)",
    )
    add_duplicate_options(
        ap, "also list perceptually similar images (pHash) in different splits under different patients"
    )
    args = ap.parse_args(argv)
    if _pipeline_of(args.output_dir) == "embed":  # a `medprep embed` output has its own checks
        from medprep.pipelines.tools.embed_verify import main as verify_embeddings_main

        return verify_embeddings_main([args.output_dir])
    problems, facts = verify(args.output_dir, not args.no_phi_scan, args.near_duplicates, args.phash_distance)
    for p in problems:
        print("FAIL", p)
    for bits, one, two in facts.get("near_duplicate_pairs", []):
        print(f"NEAR {bits} bits: {describe_images([one, two])}")
    if facts.get("near_duplicates_truncated"):
        print(f"NEAR list stops at {MAX_NEAR_PAIRS} pairs")
    for name in facts.get("leftover_staging", []):
        print(f"WARN {name}: left by a run that did not finish (`medprep recover {args.output_dir}` removes it)")
    if facts.get("phi_values_checked") == 0:
        print("WARN no identifier values to look for in the manifest (no patient ids or specific path components)")
    if problems:
        print(f"{args.output_dir}: {len(problems)} problem(s)")
        return 1
    shown = {k: v for k, v in facts.items() if k not in ("near_duplicate_pairs", "leftover_staging")}
    print(f"OK {args.output_dir}: {json.dumps(shown)}")
    return 0
