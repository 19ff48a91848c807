"""Bounded reads and limits: only regular files are read, sizes are checked before reading, reads stop at the
limit, text past --max_text_bytes is an error line; hostile rows never stall or flood a run."""

import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from medprep.pipelines.cli.main import main, run_pipeline
from medprep.pipelines.io.manifest import check_text_sizes
from medprep.pipelines.io.sources.files import localize_file, read_bytes, read_head
from medprep.transforms.errors import ItemError


def _within(seconds: float, fn):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("reader", [read_bytes, read_head, localize_file])
def test_a_fifo_is_refused_without_waiting_for_a_writer(fifo, reader):
    with pytest.raises(ItemError, match=r"is a FIFO \(named pipe\), not a regular file; not read") as e:
        _within(5, lambda: reader(fifo))
    assert e.value.stage == "read"


def test_devices_and_folders_are_refused(tmp_path):
    with pytest.raises(ItemError, match="/dev/zero is a character device, not a regular file"):
        _within(5, lambda: read_bytes("/dev/zero"))
    with pytest.raises(ItemError, match="is a folder, not a regular file"):
        read_bytes(str(tmp_path))


def test_size_is_checked_before_reading(tmp_path):
    huge = tmp_path / "huge.dcm"
    with open(huge, "wb") as fh:  # a sparse 3 GB file: reading it would take seconds and 3 GB of memory
        fh.truncate(3 << 30)
    t = time.perf_counter()
    with pytest.raises(ItemError, match=r"is 3,221,225,472 bytes, above --max_input_bytes \(104,857,600\); not read"):
        read_bytes(str(huge), limit=100 << 20)
    assert time.perf_counter() - t < 1.0
    small = tmp_path / "ok.bin"
    small.write_bytes(b"x" * 1000)
    assert read_bytes(str(small), limit=1000) == b"x" * 1000
    with pytest.raises(ItemError, match="above --max_input_bytes"):
        read_bytes(str(small), limit=999)


def test_a_read_stops_at_the_limit_even_when_the_size_lies():
    """/proc files declare size 0 and yield more: the read stops at limit + 1 bytes and refuses."""
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(ItemError, match="above --max_input_bytes"):
        read_bytes("/proc/self/status", limit=64)
    assert b"VmRSS" in read_bytes("/proc/self/status", limit=1 << 20)


def test_text_size_limit():
    row = {"text": "é" * 600, "prompt": "", "label": "", "box_labels": ["ok", "x" * 2000]}
    check_text_sizes({**row, "box_labels": []}, 1200)  # 1,200 bytes exactly: within
    with pytest.raises(ItemError, match=r"text is 1,202 bytes \(UTF-8\), above --max_text_bytes \(1,201\)") as e:
        check_text_sizes({**row, "text": "é" * 601}, 1201)
    assert e.value.stage == "text"
    with pytest.raises(ItemError, match=r"box_labels\[1\] is 2,000 bytes"):
        check_text_sizes(row, 1500)


def _png(path, seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), np.uint8)).save(buf, "PNG")
    open(path, "wb").write(buf.getvalue())


def test_hostile_rows_become_error_lines_and_good_rows_are_kept(tmp_path, fifo):
    """A FIFO, /dev/zero, a sparse 3 GB file, a 50 MB report and a folder among good rows: the run finishes
    quickly, each bad row is one error line naming why, the good rows are records."""
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:
        fh.truncate(3 << 30)
    rows = []
    for i in range(10):
        _png(tmp_path / f"g{i}.png", i)
        rows.append({"id": f"g{i}", "image": f"g{i}.png", "text": f"good {i}"})
    rows += [
        {"id": "fifo", "image": fifo, "text": "x"},
        {"id": "zero", "image": "/dev/zero", "text": "x"},
        {"id": "huge", "image": str(huge), "text": "x"},
        {"id": "longtext", "image": "g0.png", "text": "report " * (50 << 17)},
        {"id": "folder", "image": str(tmp_path), "text": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    t = time.perf_counter()
    s = _within(
        240,
        lambda: run_pipeline(
            "images",
            ["--input", str(tmp_path / "m.jsonl"), "--output_dir", str(out), "--max_input_bytes", "1G"]
            + ["--max_error_fraction", "0.5"],
        ),
    )
    assert time.perf_counter() - t < 120
    assert (s["inputs"], s["examples"], s["errors"], s["reconciled"]) == (15, 10, 5, True)
    assert s["errors_by_stage"] == {"read": 4, "text": 1}
    lines = {}
    for name in os.listdir(out / "errors"):
        for line in open(out / "errors" / name):
            e = json.loads(line)
            lines[e["row"]] = e["message"]
    assert "FIFO" in lines[11] and "character device" in lines[12] and "folder" in lines[15]
    assert "above --max_input_bytes (1,073,741,824)" in lines[13]
    assert "text is 45,875,200 bytes (UTF-8), above --max_text_bytes (1,048,576)" in lines[14]


def test_bad_limit_options_fail_at_start_up(tmp_path, capsys):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": "t"}) + "\n")
    for option, value in (("--max_input_bytes", "lots"), ("--max_text_bytes", "0"), ("--max_input_bytes", "-1G")):
        with pytest.raises(SystemExit) as exc:
            main(["images", "--input", str(tmp_path / "m.jsonl"), "--output_dir", str(tmp_path / "o"), option, value])
        assert exc.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_byte_sizes_parse():
    from medprep.transforms.option_fields import byte_size

    assert [byte_size(t) for t in ("1000", "500M", "2G", "1.5K", "4GiB", "1t")] == [
        1000,
        500 << 20,
        2 << 30,
        1536,
        4 << 30,
        1 << 40,
    ]


def test_a_fifo_given_as_the_manifest_is_refused_at_start_up(tmp_path, capsys):
    fifo = str(tmp_path / "m.jsonl")
    os.mkfifo(fifo)
    code = _within(30, lambda: main(["images", "--input", fifo, "--output_dir", str(tmp_path / "o")]))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medprep: error: --input: {fifo} is a FIFO (named pipe), not a regular file; not read"
