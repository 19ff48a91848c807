"""Verify a `medprep embed` output: counts, shapes, both formats, and every key back to the input's records.

Checks: summary.json reconciles (images in = embeddings + error lines) and errors/ holds its error count;
every listed shard exists and holds its listed rows; rows are unique by (example_id, image_index), sit
in their split's shards, carry the run's model hash and have the model's shapes (pooled: embedding_dim;
tokens: the token grid); ArrayRecord and Parquet hold the same rows, value for value; and, reading the
input output's records, every row names an existing image of a record of the same split, and every image
of the input has a row or an error line.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict

import numpy as np

from medprep.pipelines.io.outputs import join, localize
from medprep.schemas.embedding_readers import read_embedding_arrayrecord_shard, read_embedding_parquet_shard
from medprep.schemas.readers import read_records

READERS = {"arrayrecord": read_embedding_arrayrecord_shard, "parquet": read_embedding_parquet_shard}


def _input_images(path: str, fmt: str) -> dict[tuple[str, int], str]:
    """{(example_id, image index): split} of every image of a medprep output's records."""
    out = {}
    for rec in read_records(join(path, fmt)):
        for i in range(len(rec["images"])):
            out[(rec["example_id"], i)] = rec["split"]
    return out


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


def verify_embeddings(output_dir: str, check_input: bool = True) -> tuple[list[str], dict]:
    """(problems, facts) for an embed output folder (local or gs://); no problems means it verifies."""
    if "://" in output_dir:
        folder = localize(output_dir)
        try:
            return verify_embeddings(folder, check_input)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    summary_path = join(output_dir, "summary.json")
    if not os.path.isfile(summary_path):
        return [f"no summary.json in {output_dir}: the run did not complete"], {}
    summary = json.load(open(summary_path, encoding="utf-8"))
    if summary.get("pipeline") != "embed":
        return [f"{output_dir} is not a medprep embed output (pipeline {summary.get('pipeline')!r})"], {}
    problems: list[str] = []
    inputs, embeddings, nerr = summary["inputs"], summary["embeddings"], summary["errors"]
    if inputs != embeddings + nerr or not summary.get("reconciled"):
        problems.append(f"summary does not reconcile: images in {inputs} != embeddings {embeddings} + errors {nerr}")
    error_refs = []
    for f in summary["files"]:
        if "lines" not in f:
            continue
        path = join(output_dir, f["path"])
        if not os.path.isfile(path):
            problems.append(f"missing error file {f['path']}")
            continue
        lines = [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]
        error_refs += [line["ref"] for line in lines]
        if len(lines) != f["lines"]:
            problems.append(f"{f['path']}: summary lists {f['lines']} lines, the file holds {len(lines)}")
    if len(error_refs) != nerr:
        problems.append(f"summary counts {nerr} errors, errors/ holds {len(error_refs)} lines")
    model, pooling = summary["model"], summary["pooling"]
    rows_by_format: dict[str, dict] = defaultdict(dict)
    for f in summary["files"]:
        if "format" not in f:
            continue
        path = join(output_dir, f["path"])
        if not os.path.isfile(path):
            problems.append(f"missing shard {f['path']}")
            continue
        count = 0
        try:
            for row in READERS[f["format"]](path):
                count += 1
                key = (row["example_id"], row["image_index"])
                if key in rows_by_format[f["format"]]:
                    problems.append(f"{f['path']}: duplicate row {key[0]}/{key[1]}")
                rows_by_format[f["format"]][key] = row
                _check_row(row, f, model, pooling, problems)
        except Exception as exc:
            problems.append(f"{f['path']}: cannot read row {count}: {type(exc).__name__}: {exc}")
        if count != f["records"]:
            problems.append(f"{f['path']}: summary lists {f['records']} rows, the shard holds {count}")
    formats = sorted(rows_by_format)
    for fmt in formats:
        if len(rows_by_format[fmt]) != embeddings:
            problems.append(f"{fmt}: {len(rows_by_format[fmt])} rows, summary says {embeddings}")
    if len(formats) == 2:
        one, two = rows_by_format[formats[0]], rows_by_format[formats[1]]
        if set(one) != set(two):
            problems.append("ArrayRecord and Parquet hold different rows")
        else:
            for key in sorted(one):
                a, b = one[key], two[key]
                same = all(
                    (a[k] is None and b[k] is None)
                    or (a[k] is not None and b[k] is not None and np.array_equal(a[k], b[k]))
                    for k in ("embedding", "tokens")
                ) and all(a[k] == b[k] for k in a if k not in ("embedding", "tokens"))
                if not same:
                    problems.append(f"row {key[0]}/{key[1]} differs between ArrayRecord and Parquet")
    facts = {
        "embeddings": embeddings,
        "errors": nerr,
        "inputs": inputs,
        "formats": formats,
        "shards": sum(1 for f in summary["files"] if "format" in f),
        "input_checked": False,
    }
    if check_input and formats:
        source = summary["input"]["path"]
        local = localize(source) if "://" in source else source
        try:
            images = _input_images(local, summary["input"]["format"])
        except Exception as exc:
            problems.append(f"cannot read the input {source}: {type(exc).__name__}: {exc}")
            images = None
        finally:
            if local != source:
                shutil.rmtree(local, ignore_errors=True)
        if images is not None:
            rows = rows_by_format[formats[0]]
            unknown = [k for k in rows if k not in images]
            wrong_split = [k for k in rows if k in images and images[k] != rows[k]["split"]]
            refs = set(error_refs)
            failed_range = any(r.endswith("]") for r in refs)  # an unreadable record range names no image
            unaccounted = [] if failed_range else [k for k in images if k not in rows and f"{k[0]}/{k[1]}" not in refs]
            for what, keys in (
                ("names no image of the input", unknown),
                ("has another split than its record", wrong_split),
            ):
                if keys:
                    problems.append(f"{len(keys)} row(s) {what} (first: {keys[0][0]}/{keys[0][1]})")
            if unaccounted:
                problems.append(
                    f"{len(unaccounted)} input image(s) have neither a row nor an error line (first: "
                    f"{unaccounted[0][0]}/{unaccounted[0][1]})"
                )
            facts.update(input_checked=True, input_images=len(images))
    return problems, facts


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
