"""`medprep inspect OUT`: a self-contained HTML report (report.html) and the contact sheet (preview.png).

Counts per split/task/modality, sample grids (CT windows shown per channel, volumes as slice
strips, localization boxes drawn), token-length histograms, errors grouped by reason, and the
run's configuration. With `--near_duplicates`, a section lists the images that sit in two splits
under different patient keys: pixel-identical ones and perceptually similar pairs (pHash, as
`medprep verify --near_duplicates`).

Bounded memory, where the data is: local or gs:// outputs are read in place, record by record
(output_reader); what is kept is small whatever the dataset's size — a few sample records per task and
modality, the contact sheet's 16 images, length histograms as value counts, error groups with their
first references, and per image only its hashes (with --near_duplicates).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageDraw

from medprep.pipelines.io.outputs import join, write_bytes
from medprep.pipelines.tools.output_reader import is_file, iter_lines, iter_shard, read_summary, shard_format
from medprep.pipelines.tools.preview import caption_of, contact_sheet

SAMPLES_PER_GROUP = 4
SHEET_IMAGES = 16  # images on the contact sheet
ERROR_REFS = 3  # references shown per error group
THUMB = 192
SLICE_THUMB = 96
PAIR_ROWS = 24  # duplicate rows shown with thumbnails; the rest are counted
# The report's style sheet, a line per group of rules as the page carries it.
_STYLE = "\n".join(
    (
        "body{font:14px system-ui,sans-serif;margin:24px;color:#222} h1{margin:0 0 4px} "
        "table{border-collapse:collapse;margin:8px 16px 16px 0;display:inline-table;vertical-align:top}",
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} td.n{text-align:right} .ok{color:#070} "
        ".bad{color:#b00}",
        ".sample{display:inline-block;vertical-align:top;width:420px;margin:0 12px 16px 0} "
        ".imgs img{margin:0 2px 2px 0;background:#000}",
        "figure.slice,figure.slidemap{display:inline-block;margin:0 3px 3px 0} figure.slice figcaption{font-size:10px} "
        ".chan figure{display:inline-block;margin:0 4px 0 0} .chan figcaption{font-size:11px}",
        ".meta{color:#666;font-size:12px;margin:2px 0} .prompt{font-style:italic;margin:2px 0} "
        ".text{margin:2px 0;white-space:pre-wrap}",
        ".hist{display:inline-block;margin:0 16px 16px 0} .hist rect{fill:#4a7} svg{background:#f6f6f6}",
    )
)


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(data: bytes, size: int) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return img


def _img_tag(img: Image.Image, alt: str, cls: str = "") -> str:
    return (
        f'<img class="{cls}" alt="{html.escape(alt)}" src="{_data_uri(img)}" width="{img.width}" height="{img.height}">'
    )


_URL_USER = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def source_refs(summary: dict, wanted: set[str] | None = None) -> dict[str, str]:
    """`source` value -> the manifest's reference, so the report can reopen a slide. With --keep_source the
    value is the reference itself ({}); by default it is the reference's salted hash (user:password removed),
    recomputed here with the run's salt when it is known: the public default, or $MEDPREP_SALT. With `wanted`,
    only those values are kept and the manifest is read until all are found."""
    from medprep.pipelines.io.manifest import read_manifest
    from medprep.pipelines.records.privacy import DEFAULT_SALT, keyed_hash

    config = summary["config"]
    salt = DEFAULT_SALT if config.get("salt_is_default") else os.environ.get("MEDPREP_SALT", "")
    if config.get("keep_source") or not salt or not config.get("input"):
        return {}
    refs = {}
    try:
        for row in read_manifest(config["input"]):
            for ref in row["images"] + ([row["prior"]] if row["prior"] else []):
                value = keyed_hash(salt, "source", _URL_USER.sub(r"\1", ref))
                if wanted is None or value in wanted:
                    refs[value] = ref
            if wanted is not None and len(refs) == len(wanted):
                break
    except Exception:  # the manifest moved or is unreadable: the report shows the patches without the map
        return {}
    return refs


def slide_map(
    rec: dict, infos: list[dict], manifest: str, side: int = 320, refs: dict | None = None
) -> Image.Image | None:
    """The slide's thumbnail with its tissue mask tinted green and the record's patches outlined in red,
    or None when the source slide cannot be opened now. `refs` maps hashed sources back (source_refs)."""
    import numpy as np

    from medprep.pipelines.io.manifest import resolve_ref
    from medprep.pipelines.io.sources.files import localize_file
    from medprep.transforms.slide_reader import open_slide
    from medprep.transforms.tissue import otsu_saturation_mask

    slide = infos[0].get("slide", {})
    ref = resolve_ref((refs or {}).get(rec["source"][0], rec["source"][0]), manifest)
    try:
        local = None if ref.startswith(("http://", "https://")) else localize_file(ref)
        reader = open_slide(local.path if local else ref, assume_mpp=1.0)  # DICOMweb series open directly
        try:
            thumb, downsample = reader.thumbnail(8.0)
        finally:
            reader.close()
            if local:
                local.cleanup()
    except Exception:  # the source is gone or unreachable: the report shows the patches without the map
        return None
    rgb = thumb.astype(np.float32)
    if slide.get("tissue_rule") == "otsu":
        mask = otsu_saturation_mask(thumb)
    else:
        g = thumb @ np.array([0.299, 0.587, 0.114])
        mask = (g >= 1) & (g <= 204)
    rgb[mask] = rgb[mask] * 0.6 + np.array([0, 160, 0]) * 0.4
    img = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for info in infos:
        x0, y0, side0 = info["x"] / downsample, info["y"] / downsample, info["size0"] / downsample
        draw.rectangle([x0, y0, x0 + side0, y0 + side0], outline=(230, 20, 20), width=2)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return img


def _sample_html(rec: dict, manifest: str = "", refs: dict | None = None) -> str:
    infos = [json.loads(i) for i in rec["image_info"]]
    parts = []
    if rec["task"] == "slide":
        overview = slide_map(rec, infos, manifest, refs=refs)
        if overview is not None:
            parts.append(
                f'<figure class="slidemap">{_img_tag(overview, "slide map")}'
                f"<figcaption>tissue (green) and the {len(infos)} patches (red)</figcaption></figure>"
            )
    if rec["task"] in ("series", "slide") or len(rec["images"]) > 2:
        step = max(1, len(rec["images"]) // 8)
        for data, info in list(zip(rec["images"], infos))[::step][:8]:
            label = html.escape(str(info.get("slice_label", "")))
            parts.append(
                f'<figure class="slice">{_img_tag(_thumb(data, SLICE_THUMB), label)}'
                f"<figcaption>{label}</figcaption></figure>"
            )
    else:
        for data in rec["images"]:
            img = _thumb(data, THUMB)
            if rec["boxes"]:
                draw = ImageDraw.Draw(img)
                for (x0, y0, x1, y1), label in zip(rec["boxes"], rec["box_labels"]):
                    box = [x0 * img.width, y0 * img.height, x1 * img.width, y1 * img.height]
                    draw.rectangle(box, outline=(255, 40, 40), width=2)
                    draw.text((box[0] + 2, max(0, box[1] - 11)), label, fill=(255, 40, 40))
            parts.append(_img_tag(img, rec["task"]))
    if rec["modality"] == "CT":
        windows = re.findall(r"\[[^\]]+\]", infos[0].get("intensity", "")) or ["R", "G", "B"]
        channels = _thumb(rec["images"][len(rec["images"]) // 2], SLICE_THUMB).split()
        parts.append(
            '<div class="chan">'
            + "".join(
                f"<figure>{_img_tag(ch, 'channel')}<figcaption>{html.escape(w)} HU</figcaption></figure>"
                for ch, w in zip(channels, windows)
            )
            + "</div>"
        )
    text = rec["text"] if len(rec["text"]) < 400 else rec["text"][:400] + "…"
    tokens = f"{len(rec['prompt_ids'])} prompt / {len(rec['text_ids'])} text / {len(rec['input_ids'])} chat tokens"
    return (
        f'<div class="sample"><div class="imgs">{"".join(parts)}</div>'
        f'<p class="meta">{html.escape(rec["split"])} · {len(rec["images"])} image(s) · {tokens}</p>'
        f'<p class="prompt">{html.escape(rec["prompt"])}</p><p class="text">{html.escape(text)}</p></div>'
    )


def _median(values: Counter) -> int:
    """The upper median of a multiset given as value -> count (sorted(values)[n // 2])."""
    middle, seen = sum(values.values()) // 2, 0
    for value in sorted(values):
        seen += values[value]
        if seen > middle:
            return int(value)
    return 0


def _histogram_svg(values: Counter, title: str, bins: int = 20) -> str:
    """An SVG bar chart of a multiset given as value -> count (memory by distinct values, not by records)."""
    if not values:
        return f"<p>{html.escape(title)}: no data</p>"
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts: Counter = Counter()
    for value, count in values.items():
        counts[(value - lo) // width] += count
    n = max(counts) + 1
    top = max(counts.values())
    bars = "".join(
        f'<rect x="{i * 400 / n:.1f}" y="{100 - 100 * counts.get(i, 0) / top:.1f}" width="{400 / n - 1:.1f}" '
        f'height="{100 * counts.get(i, 0) / top:.1f}"><title>{lo + i * width}–{lo + (i + 1) * width - 1}: '
        f"{counts.get(i, 0)}</title></rect>"
        for i in range(n)
    )
    return (
        f'<figure class="hist"><svg viewBox="0 0 400 100" width="400" height="100">{bars}</svg>'
        f"<figcaption>{html.escape(title)}: n={sum(values.values())}, min {lo}, median {_median(values)}, "
        f"max {hi}</figcaption></figure>"
    )


class ErrorGroups:
    """Error lines grouped by (stage, error class, reason), each with its count and first references."""

    def __init__(self) -> None:
        self.total = 0
        self._groups: dict[tuple[str, str, str], tuple[int, list[str]]] = {}

    def add(self, line: dict) -> None:
        reason = re.sub(r"(/|gs://)[^\s:;,)]+", "<path>", line["message"])[:160]
        key = (line["stage"], line["error"], reason)
        count, refs = self._groups.get(key, (0, []))
        if len(refs) < ERROR_REFS:
            refs.append(line["ref"])
        self._groups[key] = (count + 1, refs)
        self.total += 1

    def rows(self) -> list[tuple[tuple[str, str, str], int, list[str]]]:
        """(key, count, first references), the largest group first."""
        return sorted(((k, n, refs) for k, (n, refs) in self._groups.items()), key=lambda t: -t[1])


def _table(rows: dict, name: str) -> str:
    body = "".join(
        f'<tr data-{name}="{html.escape(str(k))}"><td>{html.escape(str(k))}</td><td class="n">{v}</td></tr>'
        for k, v in sorted(rows.items())
    )
    return f'<table class="counts"><tr><th>{name}</th><th>examples</th></tr>{body}</table>'


def _pair_thumbs(shards: list[str], wanted: set) -> dict:
    """(example_id, image index) -> thumbnail <img> tag, for the images a duplicate row shows (a second pass)."""
    tags = {}
    ids = {eid for eid, _ in wanted}
    for shard in shards:
        for rec in iter_shard(shard, shard_format(shard)):
            if rec["example_id"] in ids:
                for i, data in enumerate(rec["images"]):
                    key = (rec["example_id"], i)
                    if key in wanted:
                        tags[key] = _img_tag(_thumb(data, SLICE_THUMB), f"{key[0]} image {i}")
    return tags


def _image_cell(ref: tuple, tags: dict) -> str:
    eid, i, split = ref
    return (
        f'<td>{tags.get((eid, i), "")}<br><span class="meta">{html.escape(split)} · '
        f"{html.escape(eid)} image {i}</span></td>"
    )


def _more(rows: list, shown: list) -> str:
    return f"<p>… and {len(rows) - len(shown)} more</p>" if len(rows) > len(shown) else ""


def _skipped_series_html(skipped: dict) -> str:
    """Series left out of inputs that still gave records (a scout, a filtered or broken series), by reason."""
    if not skipped:
        return ""
    rows = "".join(
        f'<tr><td>{html.escape(reason)}</td><td class="n">{n}</td></tr>' for reason, n in sorted(skipped.items())
    )
    return (
        f'<h3>Series skipped ({sum(skipped.values())})</h3><table id="series-skipped"><tr><th>reason</th>'
        f"<th>count</th></tr>{rows}</table>"
    )


def _duplicates_html(dups, shards: list[str]) -> str:
    """The 'Duplicates across splits' section: not run, or (identical groups, near pairs, truncated, distance)."""
    if dups is None:
        return (
            '<p id="duplicates-not-run">not checked: <code>medprep inspect OUT --near_duplicates</code> '
            "hashes every image and lists the pairs here</p>"
        )
    identical, near, truncated, distance = dups
    shown_groups, shown_pairs = identical[:PAIR_ROWS], near[:PAIR_ROWS]
    wanted = {(eid, i) for group in shown_groups for eid, i, _ in group}
    wanted |= {(ref[0], ref[1]) for _, one, two, _ in shown_pairs for ref in (one, two)}
    tags = _pair_thumbs(shards, wanted) if wanted else {}
    groups = "".join(
        f'<tr class="identical" data-images="{html.escape(" ".join(f"{e}:{i}" for e, i, _ in g))}">'
        + "".join(_image_cell(ref, tags) for ref in g)
        + "</tr>"
        for g in shown_groups
    )
    pairs = "".join(
        f'<tr class="near" data-bits="{bits}" data-a="{html.escape(one[0])}:{one[1]}" '
        f'data-b="{html.escape(two[0])}:{two[1]}"><td class="n">{bits}</td>'
        f"{_image_cell(one, tags)}{_image_cell(two, tags)}</tr>"
        for bits, one, two, _ in shown_pairs
    )
    return (
        f"<h3>Identical images under different patient keys "
        f'(<span id="identical-count">{len(identical)}</span>)</h3>'
        f'<table id="identical">{groups}</table>{_more(identical, shown_groups)}'
        f"<h3>Near-duplicate pairs, pHash at most {distance} of 64 bits apart "
        f'(<span id="near-count">{len(near)}{"+" if truncated else ""}</span>)</h3>'
        f'<table id="near-duplicates"><tr><th>bits apart</th><th>image</th><th>image</th></tr>{pairs}</table>'
        f"{_more(near, shown_pairs)}"
    )


def report_shards(output_dir: str, summary: dict) -> list[str]:
    """The shards the report reads: summary.json's Parquet shards, else its ArrayRecord ones (that exist)."""
    listed = [f for f in summary["files"] if "format" in f]
    fmt = "parquet" if any(f["format"] == "parquet" for f in listed) else "arrayrecord"
    paths = (join(output_dir, f["path"]) for f in listed if f["format"] == fmt)
    return [path for path in paths if is_file(path)]


def _error_lines(output_dir: str, summary: dict) -> Iterator[dict]:
    """The error lines of summary.json's errors/ files, one at a time (unparseable lines skipped)."""
    for f in summary["files"]:
        path = join(output_dir, f["path"])
        if "lines" in f and is_file(path):
            for line in iter_lines(path):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and {"ref", "stage", "error", "message"} <= set(entry):
                    yield entry


class _Pass:
    """What one streamed pass over the records keeps: a few samples per (task, modality), the contact sheet's
    images, length histograms (value counts) and, with near-duplicates, the images' hashes."""

    def __init__(self, index: Any):
        self.index = index
        self.groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.lengths: dict[str, Counter] = defaultdict(Counter)
        self.sheet: list[tuple[str, bytes, str]] = []

    def add(self, rec: dict) -> None:
        self.lengths["text tokens"][len(rec["text_ids"])] += 1
        self.lengths["prompt tokens"][len(rec["prompt_ids"])] += 1
        self.lengths["chat sequence tokens"][len(rec["input_ids"])] += 1
        self.lengths["images per example"][len(rec["images"])] += 1
        self.lengths["text characters"][len(rec["text"])] += 1
        if self.index is not None:
            number = self.index.add_record(rec["example_id"], rec["split"], rec["patient_key"])
            for i, data in enumerate(rec["images"]):
                self.index.add_image(number, i, Image.open(io.BytesIO(data)))
        group = self.groups[(rec["task"], rec["modality"])]
        if len(group) < SAMPLES_PER_GROUP:
            group.append(rec)
        if len(self.sheet) < SHEET_IMAGES:
            self.sheet.append((rec["example_id"], rec["images"][0], caption_of(rec)))


def build_report(folder: str, near_duplicates: bool = False, phash_distance: int | None = None) -> tuple[str, bytes]:
    """(report HTML, contact-sheet PNG) for an output folder, local or gs://, read in place record by record;
    `near_duplicates` hashes every image."""
    from medprep.pipelines.tools.verify import DEFAULT_PHASH_DISTANCE, ImageIndex

    distance = DEFAULT_PHASH_DISTANCE if phash_distance is None else phash_distance
    summary = read_summary(folder)
    if summary is None:
        raise FileNotFoundError(f"no summary.json in {folder}")
    errors = ErrorGroups()
    for line in _error_lines(folder, summary):
        errors.add(line)
    shards = report_shards(folder, summary)
    seen = _Pass(ImageIndex(near=True) if near_duplicates else None)
    for shard in shards:
        for rec in iter_shard(shard, shard_format(shard)):
            seen.add(rec)
    index, groups, lengths, sheet = seen.index, seen.groups, seen.lengths, seen.sheet
    sheet_png = contact_sheet(sorted(sheet))
    dups = (index.identical_across_splits(), *index.near_pairs(distance), distance) if index is not None else None
    status = "reconciled" if summary["reconciled"] else "NOT reconciled"
    counts = "".join(
        f'<tr><td>{k}</td><td class="n" id="count-{k}">{summary[k]}</td></tr>'
        for k in ("inputs", "inputs_with_examples", "examples", "images", "errors")
    )
    slide_sources = {r["source"][0] for (t, _), recs in groups.items() if t == "slide" for r in recs if r["source"]}
    refs = source_refs(summary, slide_sources) if slide_sources else {}
    samples = "".join(
        f'<section class="group"><h3>{html.escape(t)} · {html.escape(m)}</h3>'
        + "".join(_sample_html(r, summary["config"].get("input", ""), refs) for r in recs)
        + "</section>"
        for (t, m), recs in sorted(groups.items())
    )
    hists = "".join(_histogram_svg(v, k) for k, v in lengths.items() if any(v))
    error_rows = "".join(
        f'<tr><td>{html.escape(s)}</td><td>{html.escape(c)}</td><td>{html.escape(r)}</td><td class="n">{n}</td>'
        f"<td>{'<br>'.join(html.escape(x) for x in refs)}</td></tr>"
        for (s, c, r), n, refs in errors.rows()
    )
    config = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in sorted(summary["config"].items())
    )
    versions = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("versions", {}).items()))
    output_dir = html.escape(summary["config"].get("output_dir", ""))
    status_class = "ok" if summary["reconciled"] else "bad"
    tables = (
        _table(summary["by_split"], "split")
        + _table(summary["by_task"], "task")
        + _table(summary["by_modality"], "modality")
    )
    sheet_base64 = base64.b64encode(sheet_png).decode("ascii")
    error_headers = "".join(f"<th>{h}</th>" for h in ("stage", "error", "reason", "count", "examples"))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medprep report — {html.escape(summary["pipeline"])}</title>
<style>
{_STYLE}
</style></head>
<body data-pipeline="{html.escape(summary["pipeline"])}">
<h1>medprep {html.escape(summary["pipeline"])}</h1>
<p>{output_dir} · <span class="{status_class}" id="status">{status}</span>
· config {summary["config_hash"][:12]}</p>
<h2>Counts</h2>
<table class="counts"><tr><th>what</th><th>count</th></tr>{counts}</table>
{tables}
<h2>Samples</h2>{samples or "<p>no examples</p>"}
<h2>Lengths</h2>{hists}
<h2>Errors ({errors.total})</h2>
<table id="errors"><tr>{error_headers}</tr>{error_rows}</table>
{_skipped_series_html(summary.get("series_skipped") or {})}
<h2 id="duplicates">Duplicates across splits</h2>{_duplicates_html(dups, shards)}
<h2>Contact sheet</h2><img id="contact-sheet" alt="contact sheet" src="data:image/png;base64,{sheet_base64}">
<h2>Configuration</h2><table>{config}</table>
<p class="meta">{html.escape(versions)}</p>
<script>
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    return page, sheet_png


def inspect(output_dir: str, near_duplicates: bool = False, phash_distance: int | None = None) -> str:
    """Write report.html (and preview.png when missing) into output_dir, local or gs:// (read in place);
    returns the report's path."""
    page, sheet = build_report(output_dir, near_duplicates, phash_distance)
    write_bytes(join(output_dir, "report.html"), page.encode("utf-8"))
    if not is_file(join(output_dir, "preview.png")):
        write_bytes(join(output_dir, "preview.png"), sheet)
    return join(output_dir, "report.html")


def main(argv: list[str]) -> int:
    """CLI entry."""
    import argparse

    ap = argparse.ArgumentParser(prog="medprep inspect", description="write OUT/report.html (and the contact sheet)")
    from medprep.pipelines.tools.verify import add_duplicate_options

    ap.add_argument("output_dir", help="a medprep output folder (local or gs://)")
    add_duplicate_options(
        ap, "hash every image and list identical and similar images in different splits under different patient keys"
    )
    args = ap.parse_args(argv)
    if not is_file(join(args.output_dir, "summary.json")):
        print(f"medprep: error: {args.output_dir}: no summary.json (not a finished medprep output)")
        return 2
    print(inspect(args.output_dir, args.near_duplicates, args.phash_distance))
    return 0
