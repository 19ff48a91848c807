"""`medprep verify` of an embed output in bounded memory: rows are read one at a time, the two formats' copies
of a shard side by side, and no row value is kept (the whole-output reader it replaced held every row)."""

import json
import os
import tracemalloc

from medprep.pipelines.io.embedding_sinks import EMBEDDING_FORMATS
from medprep.pipelines.io.sinks import _WriteShard, remove_parts
from medprep.pipelines.tools.embed_verify import verify_embeddings
from test_embedding_sinks import _row, _stage  # tests/pipelines/test_embedding_sinks.py

GRID = (16, 16, 128)  # 32,768 token values: 128 KiB a row


def _embed_output(out: str, n: int) -> str:
    """An embed output of n token rows in one train shard per format, with its summary.json."""
    staged = _stage((_row(i, 0, grid=GRID) for i in range(n)), out)
    writer = _WriteShard(out, ("arrayrecord", "parquet"), "", EMBEDDING_FORMATS)
    files = list(writer.process((("train", 0, 1), staged)))
    remove_parts(os.path.join(out, ".records-tmp"))
    os.makedirs(os.path.join(out, "errors"))
    open(os.path.join(out, "errors", "errors-00000-of-00001.jsonl"), "w").close()
    summary = {
        "pipeline": "embed",
        "inputs": n,
        "embeddings": n,
        "errors": 0,
        "reconciled": True,
        "files": files + [{"path": "errors/errors-00000-of-00001.jsonl", "lines": 0}],
        "model": {"model_hash": "m" * 64, "embedding_dim": 16, "token_grid": list(GRID)},
        "pooling": "both",
        "input": {"path": "nowhere", "format": "parquet"},
    }
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh)
    return out


def _peak(out: str) -> tuple[list[str], dict, int]:
    tracemalloc.start()
    problems, facts = verify_embeddings(out, check_input=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return problems, facts, peak


def test_verify_memory_does_not_grow_with_the_rows(tmp_path):
    # 100 and 800 rows (12.5 and 100 MiB per format): the peak stays put; holding the rows would take 200 MiB
    small = _peak(_embed_output(str(tmp_path / "small"), 100))
    large = _peak(_embed_output(str(tmp_path / "large"), 800))
    assert small[0] == [] and large[0] == [] and large[1]["embeddings"] == 800
    assert large[2] < small[2] + (4 << 20) and large[2] < 32 << 20, (small[2], large[2])


def test_verify_finds_rows_in_the_wrong_shard(tmp_path):
    out = _embed_output(str(tmp_path / "o"), 6)
    summary = json.load(open(os.path.join(out, "summary.json")))
    for f in summary["files"]:
        if f.get("format"):
            f.update(shard=1, of=2)  # as if written as shard 1 of 2: some rows belong in shard 0
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"))
    problems, _ = verify_embeddings(out, check_input=False)
    assert any("its example_id belongs in shard 0 of 2" in p for p in problems)
