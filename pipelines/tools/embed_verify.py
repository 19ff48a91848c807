"""Verify a `medprep embed` output: counts, shapes, both formats, and every key back to the input's records.

Checks: summary.json reconciles (images in = embeddings + error lines) and errors/ holds its error count;
every listed shard exists and holds its listed rows; rows sit in their split's shards, in the shard their
example_id gives, in strictly increasing (example_id, image_index) order (so no row appears twice in a
split), carry the run's model hash and have the model's shapes (pooled: embedding_dim; tokens: the token
grid); ArrayRecord and Parquet hold the same rows, value for value; and, reading the input output's
records, every row names an existing image of a record of the same split, and every image of the input
has a row or an error line.

Where the output lives and in bounded memory, as `medprep verify` (tools/output_reader.py): files are read
in place through Beam's FileSystems (local or gs://; Parquet by ranged reads, an ArrayRecord shard streamed
to one temporary file at a time), one row at a time; the two formats' copies of a shard are read side by
side, row against row. No row value is held: the input check keeps, per input image, a 12-byte digest of
its key, a split code and a mark (14 bytes; with check_input=False nothing grows with the dataset).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medprep.pipelines.io.outputs import join
from medprep.pipelines.io.sinks import shard_of
from medprep.pipelines.tools.output_reader import is_file, iter_lines, iter_shard, read_summary
from medprep.pipelines.tools.verify import Problems
from medprep.schemas.embedding_codec import decode_embedding_row, rows_from_batch

_DIGEST_BYTES = 12


def _digest(example_id: str, image_index: int) -> bytes:
    """12 bytes naming one image; the last byte is odd, so numpy's fixed-width bytes never strip it."""
    d = hashlib.blake2b(f"{example_id}/{image_index}".encode(), digest_size=_DIGEST_BYTES).digest()
    return d[:-1] + bytes([d[-1] | 1])


class InputImages:
    """Every image of a medprep output's records, as a sorted array of digests with a split code and a
    mark each: rows and error lines mark the images they account for."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt = path, fmt
        digests, codes = bytearray(), bytearray()
        self.splits: list[str] = []
        for example_id, index, split in self._images():
            if split not in self.splits:
                self.splits.append(split)
            digests += _digest(example_id, index)
            codes.append(self.splits.index(split))
        keys = np.frombuffer(bytes(digests), dtype=f"S{_DIGEST_BYTES}")
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.codes = np.frombuffer(bytes(codes), dtype=np.uint8)[order]
        self.seen = np.zeros(len(self.keys), dtype=bool)

    def _images(self) -> Iterator[tuple[str, int, str]]:
        """(example_id, image index, split) of each image, in the input's shard and record order."""
        summary = read_summary(self.path)
        if summary is None:
            raise FileNotFoundError(f"{self.path} has no summary.json")
        for f in sorted((f for f in summary["files"] if f.get("format") == self.fmt), key=lambda f: f["path"]):
            for rec in iter_shard(join(self.path, f["path"]), self.fmt):
                for i in range(len(rec["images"])):
                    yield rec["example_id"], i, rec["split"]

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, example_id: str, image_index: int) -> int:
        """The image's position, or -1 when the input has no such image."""
        digest = _digest(example_id, image_index)
        pos = int(np.searchsorted(self.keys, digest))
        return pos if pos < len(self.keys) and self.keys[pos] == digest else -1

    def split_of(self, pos: int) -> str:
        return self.splits[int(self.codes[pos])]

    def mark_ref(self, ref: str) -> None:
        """An error line's ref `example_id/image_index` accounts for that image."""
        example_id, _, index = ref.rpartition("/")
        if example_id and index.isdigit():
            pos = self.find(example_id, int(index))
            if pos >= 0:
                self.seen[pos] = True

    def first_unseen(self) -> tuple[str, int] | None:
        """The first image (input order) that no row and no error line marked: read again only on failure."""
        if self.seen.all():
            return None
        for example_id, index, _ in self._images():
            pos = self.find(example_id, index)
            if pos >= 0 and not self.seen[pos]:
                return example_id, index
        return None


@dataclass
class _Found:
    """Rows with one kind of problem: how many, and the first one's key."""

    count: int = 0
    first: tuple[str, int] = ("", 0)

    def add(self, key: tuple[str, int]) -> None:
        self.first = self.first if self.count else key
        self.count += 1


class _InputCheck:
    """The rows of one format against the input's images: unknown rows, rows in another split."""

    def __init__(self, images: InputImages):
        self.images = images
        self.unknown, self.wrong_split = _Found(), _Found()

    def row(self, row: dict[str, Any]) -> None:
        key = (row["example_id"], row["image_index"])
        pos = self.images.find(*key)
        if pos < 0:
            self.unknown.add(key)
            return
        self.images.seen[pos] = True
        if self.images.split_of(pos) != row["split"]:
            self.wrong_split.add(key)

    def report(self, problems: list[str], failed_range: bool) -> None:
        for what, found in (
            ("names no image of the input", self.unknown),
            ("has another split than its record", self.wrong_split),
        ):
            if found.count:
                problems.append(f"{found.count} row(s) {what} (first: {found.first[0]}/{found.first[1]})")
        if failed_range:  # an unreadable record range names no image: its images cannot be told apart
            return
        unaccounted = int((~self.images.seen).sum())
        first = self.images.first_unseen() if unaccounted else None
        if first is not None:
            problems.append(
                f"{unaccounted} input image(s) have neither a row nor an error line (first: {first[0]}/{first[1]})"
            )


def _check_row(row: dict, shard: dict, model: dict, pooling: str, problems: list[str]) -> None:
    where = f"{shard['path']} row {row['example_id']}/{row['image_index']}"
    if row["split"] != shard["split"]:
        problems.append(f"{where}: split {row['split']} in a {shard['split']} shard")
    if row["model_hash"] != model.get("model_hash"):
        problems.append(f"{where}: model_hash {row['model_hash'][:12]} is not the run's")
    emb, tokens = row["embedding"], row["tokens"]
    if pooling in ("pooled", "both") and (emb is None or emb.shape != (model["embedding_dim"],)):
        problems.append(
            f"{where}: embedding shape {None if emb is None else emb.shape}, the model gives "
            f"({model['embedding_dim']},)"
        )
    if pooling in ("tokens", "both") and (tokens is None or list(tokens.shape) != list(model["token_grid"])):
        problems.append(
            f"{where}: tokens shape {None if tokens is None else tokens.shape}, the model gives "
            f"{tuple(model['token_grid'])}"
        )
    for name, value in (("embedding", emb), ("tokens", tokens)):
        if value is not None and not np.isfinite(value).all():
            problems.append(f"{where}: {name} holds non-finite values")


def _placement(row: dict, shard: dict, previous: tuple | None, problems: list[str]) -> tuple:
    """Check a row's shard (example_id mod N) and order after the previous row; its key."""
    key = (row["example_id"], row["image_index"])
    where = f"{shard['path']} row {key[0]}/{key[1]}"
    try:
        home = shard_of(key[0], shard["of"])
    except ValueError:
        home = -1
    if home != shard["shard"]:
        problems.append(f"{where}: its example_id belongs in shard {home} of {shard['of']}")
    if previous is not None and key <= previous:
        problems.append(f"{where}: {'duplicate row' if key == previous else 'out of (example_id, image_index) order'}")
    return key


def _shard_rows(output_dir: str, shard: dict, problems: list[str]) -> Iterator[dict]:
    """The rows of one listed shard, one at a time; its read errors and row count become problems."""
    count = 0
    try:
        for row in iter_shard(join(output_dir, shard["path"]), shard["format"], decode_embedding_row, rows_from_batch):
            count += 1
            yield row
    except Exception as exc:
        problems.append(f"{shard['path']}: cannot read row {count}: {type(exc).__name__}: {exc}")
    if count != shard["records"]:
        problems.append(f"{shard['path']}: summary lists {shard['records']} rows, the shard holds {count}")


def _same(a: dict, b: dict) -> bool:
    arrays = all(
        (a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and np.array_equal(a[k], b[k]))
        for k in ("embedding", "tokens")
    )
    return arrays and all(a[k] == b[k] for k in a if k not in ("embedding", "tokens"))


class _Shards:
    """Reads every listed shard once: the formats' copies of a shard side by side, row against row."""

    def __init__(self, output_dir: str, summary: dict, problems: list[str], check: _InputCheck | None):
        self.output_dir, self.summary, self.problems, self.check = output_dir, summary, problems, check
        self.listed = [f for f in summary["files"] if "format" in f]
        self.formats = sorted({f["format"] for f in self.listed})
        self.rows = dict.fromkeys(self.formats, 0)
        self.different = False

    def run(self) -> None:
        places: dict[tuple, dict[str, dict]] = {}
        for f in self.listed:
            places.setdefault((f["split"], f["shard"], f["of"]), {})[f["format"]] = f
        for place in sorted(places):
            self._place(places[place])

    def _place(self, files: dict[str, dict]) -> None:
        streams = []
        has_rows = any(f["records"] for f in files.values())
        for fmt in self.formats:
            f = files.get(fmt)
            if f is not None and not is_file(join(self.output_dir, f["path"])):
                self.problems.append(f"missing shard {f['path']}")
                f = None
            if f is None:
                self.different = self.different or has_rows
            else:
                streams.append(self._checked(f))
        for pair in itertools.zip_longest(*streams):
            if len(pair) == 2:
                self._compare(*pair)

    def _compare(self, a: dict | None, b: dict | None) -> None:
        if a is None or b is None or (a["example_id"], a["image_index"]) != (b["example_id"], b["image_index"]):
            self.different = True
        elif not _same(a, b):
            self.problems.append(f"row {a['example_id']}/{a['image_index']} differs between ArrayRecord and Parquet")

    def _checked(self, f: dict) -> Iterator[dict]:
        """The shard's rows with every per-row check; the first format's rows also go to the input check."""
        model, pooling = self.summary["model"], self.summary["pooling"]
        previous = None
        for row in _shard_rows(self.output_dir, f, self.problems):
            self.rows[f["format"]] += 1
            previous = _placement(row, f, previous, self.problems)
            _check_row(row, f, model, pooling, self.problems)
            if self.check is not None and f["format"] == self.formats[0]:
                self.check.row(row)
            yield row

    def report(self, embeddings: int) -> None:
        for fmt in self.formats:
            if self.rows[fmt] != embeddings:
                self.problems.append(f"{fmt}: {self.rows[fmt]} rows, summary says {embeddings}")
        if len(self.formats) == 2 and self.different:
            self.problems.append("ArrayRecord and Parquet hold different rows")


def _error_files(output_dir: str, summary: dict, problems: list[str], images: InputImages | None) -> tuple[int, bool]:
    """Read errors/ line by line: (lines, whether a line names an unreadable record range); each file's
    count against summary.json; with the input's images, the images the lines account for are marked."""
    total, failed_range = 0, False
    for f in summary["files"]:
        if "lines" not in f:
            continue
        path = join(output_dir, f["path"])
        if not is_file(path):
            problems.append(f"missing error file {f['path']}")
            continue
        count = 0
        for text in iter_lines(path):
            ref = json.loads(text)["ref"]
            count += 1
            failed_range = failed_range or ref.endswith("]")
            if images is not None:
                images.mark_ref(ref)
        total += count
        if count != f["lines"]:
            problems.append(f"{f['path']}: summary lists {f['lines']} lines, the file holds {count}")
    return total, failed_range


def _input_images(summary: dict, problems: list[str]) -> InputImages | None:
    source = summary["input"]["path"]
    try:
        return InputImages(source, summary["input"]["format"])
    except Exception as exc:
        problems.append(f"cannot read the input {source}: {type(exc).__name__}: {exc}")
        return None


def verify_embeddings(output_dir: str, check_input: bool = True) -> tuple[list[str], dict]:
    """(problems, facts) for an embed output folder (local or gs://, read in place); no problems means it
    verifies."""
    summary = read_summary(output_dir)
    if summary is None:
        return [f"no summary.json in {output_dir}: the run did not complete"], {}
    if summary.get("pipeline") != "embed":
        return [f"{output_dir} is not a medprep embed output (pipeline {summary.get('pipeline')!r})"], {}
    problems = Problems()
    inputs, embeddings, nerr = summary["inputs"], summary["embeddings"], summary["errors"]
    if inputs != embeddings + nerr or not summary.get("reconciled"):
        problems.append(f"summary does not reconcile: images in {inputs} != embeddings {embeddings} + errors {nerr}")
    shards = _Shards(output_dir, summary, problems, None)
    images = _input_images(summary, problems) if check_input and shards.formats else None
    lines, failed_range = _error_files(output_dir, summary, problems, images)
    if lines != nerr:
        problems.append(f"summary counts {nerr} errors, errors/ holds {lines} lines")
    shards.check = None if images is None else _InputCheck(images)
    shards.run()
    shards.report(embeddings)
    facts = {
        "embeddings": embeddings,
        "errors": nerr,
        "inputs": inputs,
        "formats": shards.formats,
        "shards": len(shards.listed),
        "input_checked": False,
    }
    if shards.check is not None and images is not None:
        shards.check.report(problems, failed_range)
        facts.update(input_checked=True, input_images=len(images))
    return problems.listed(), facts


def main(argv: list[str]) -> int:
    """`medprep verify EMB` for an embed output: FAIL lines and exit 1, or one OK line and exit 0."""
    import argparse

    ap = argparse.ArgumentParser(prog="medprep verify", description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", help="a medprep embed output folder")
    ap.add_argument("--no_input_check", action="store_true", help="do not read the input's records")
    args = ap.parse_args(argv)
    problems, facts = verify_embeddings(args.output_dir, not args.no_input_check)
    for p in problems:
        print("FAIL", p)
    if problems:
        print(f"{args.output_dir}: {len(problems)} problem(s)")
        return 1
    print(f"OK {args.output_dir}: {json.dumps(facts)}")
    return 0
