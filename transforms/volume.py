"""CT/MR volumes to model-ready slice images: per-volume intensity, slice selection, the inference API.

CT slices are windowed per slice (HU windows need no volume statistics). MR uses one range
for the whole acquisition: min-max (the MedGemma reference; a constant volume becomes 255)
or percentiles, from histograms accumulated one slice at a time (memory: one slice).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medprep.transforms.chat import Message, prompt_then_images, user_messages
from medprep.transforms.dicom_io import image_header, is_image_header, no_series, read_dataset
from medprep.transforms.dicom_render import Rendered, StoredValues, decode_frame, render_dataset
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.image import FinishedImage, ImageOptions, finish_rendered
from medprep.transforms.option_fields import int_in, number_pair, option
from medprep.transforms.series import OrderedSeries, SliceHeader, group_series, order_series, slice_headers
from medprep.transforms.slice_selection import DEFAULT_MAX_SLICES, report_indices, uniform_indices
from medprep.transforms.windowing import ct_to_rgb, describe_windows, minmax_to_uint8

VOLUME_MODALITIES = ("CT", "MR")
SELECTIONS = ("uniform", "report", "all")
MR_NORMALIZATIONS = ("minmax", "percentile")


@dataclass(frozen=True)
class VolumeOptions:
    """Slice selection (uniform|report|all, at most max_slices) and MR normalization (minmax|percentile)."""

    image: ImageOptions = ImageOptions()
    max_slices: int = option(
        DEFAULT_MAX_SLICES, f"slices per series example (default {DEFAULT_MAX_SLICES})", int_in(1, 10000)
    )
    selection: str = option(
        "uniform",
        "uniform (reference rule), report (slices named in the text, else uniform) or all",
        choices=SELECTIONS,
        name="slice_selection",
    )
    mr_normalization: str = option(
        "minmax", "MR intensity over the whole series: minmax (reference) or percentile", choices=MR_NORMALIZATIONS
    )
    mr_percentiles: tuple[float, float] = option(
        (0.5, 99.5), "low,high for percentile (default 0.5,99.5)", number_pair(0, 100)
    )
    min_slices: int = option(2, "fewer usable slices is an error (default 2)", int_in(1))


class Histogram:
    """Exact value histogram of a volume, merged slice by slice; min/max/percentiles (numpy 'linear')."""

    def __init__(self) -> None:
        self._values: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []

    def add(self, values: np.ndarray, counts: np.ndarray) -> None:
        """Add one slice's (distinct values, counts); merged eagerly to keep memory to the distinct values."""
        self._values.append(values)
        self._counts.append(counts)
        if len(self._values) > 8:
            self._merge()

    def _merge(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.concatenate(self._values)
        counts = np.concatenate(self._counts)
        uniq, inverse = np.unique(values, return_inverse=True)
        merged = np.bincount(inverse, weights=counts).astype(np.int64)
        self._values, self._counts = [uniq], [merged]
        return uniq, merged

    def percentiles(self, low: float, high: float) -> tuple[float, float]:
        """The low/high percentiles (0-100) of all values, as np.percentile would give on the full volume."""
        values, counts = self._merge()
        cum = np.cumsum(counts)
        total = int(cum[-1])

        def at(p: float) -> float:
            pos = p / 100.0 * (total - 1)
            lo_rank = int(np.floor(pos))
            frac = pos - lo_rank
            a = values[np.searchsorted(cum, lo_rank + 1)]
            b = values[np.searchsorted(cum, min(lo_rank + 2, total))]
            return float(a + (b - a) * frac)

        return at(low), at(high)

    def range(self) -> tuple[float, float]:
        """(min, max)."""
        values, _ = self._merge()
        return float(values[0]), float(values[-1])


class SliceSource:
    """An ordered volume: n slices, each renderable; what prepare_volume needs from DICOM or NIfTI."""

    modality: str
    n: int

    def slice_info(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def histogram(self) -> Histogram:
        raise NotImplementedError

    def render(self, index: int, value_range: tuple[float, float] | None) -> Rendered:
        raise NotImplementedError


@dataclass(frozen=True)
class SliceSubset:
    """Some slices of an ordered series, keyed by their index in it: what one worker renders when a
    series is fanned out (DicomSeriesSource reads `slices[i]` and `z[i]` from either form)."""

    slices: dict[int, SliceHeader]
    z: dict[int, float]
    modality: str

    @classmethod
    def of(cls, ordered: OrderedSeries, indices: Iterable[int]) -> SliceSubset:
        """The slices at `indices` of an ordered series."""
        return cls({i: ordered.slices[i] for i in indices}, {i: ordered.z[i] for i in indices}, ordered.modality)


class DicomSeriesSource(SliceSource):
    """Slices of one ordered DICOM series; `load(key)` returns the full dataset of an instance."""

    def __init__(self, ordered: OrderedSeries | SliceSubset, load: Callable[[Any], Dataset], options: ImageOptions):
        self.ordered, self._load, self.options = ordered, load, options
        self.n = len(ordered.slices)
        self.modality = ordered.modality
        self._cache: tuple[object, Dataset] | None = None  # multi-frame: one object serves many slices

    def _dataset(self, header: SliceHeader) -> Dataset:
        if self._cache is None or self._cache[0] != header.key:
            self._cache = (header.key, self._load(header.key))
        return self._cache[1]

    def slice_info(self, index: int) -> dict[str, Any]:
        h = self.ordered.slices[index]
        info: dict[str, Any] = {"instance_number": h.instance_number, "z_mm": self.ordered.z[index], "frame": h.frame}
        if isinstance(h.key, str):
            info["file"] = h.key
        return info

    def histogram(self) -> Histogram:
        hist = Histogram()
        # the plan measures whole series (a SliceSubset is only rendered)
        for h in cast(OrderedSeries, self.ordered).slices:
            ds = self._dataset(h)
            with stage("decode"):
                arr = decode_frame(ds, h.frame, self.options.render.max_pixels)
                hist.add(*StoredValues(arr, ds, h.frame).histogram())
        return hist

    def render(self, index: int, value_range: tuple[float, float] | None = None) -> Rendered:
        h = self.ordered.slices[index]
        render = replace(self.options.render, frame=h.frame, value_range=value_range)
        return render_dataset(self._dataset(h), render)


class ArrayVolumeSource(SliceSource):
    """Slices of an in-memory float volume (slices, rows, cols) in physical units (NIfTI)."""

    def __init__(self, volume: np.ndarray, modality: str, z_mm: Sequence[float], options: ImageOptions):
        self.volume, self.modality, self.z, self.options = volume, modality, list(z_mm), options
        self.n = volume.shape[0]

    def slice_info(self, index: int) -> dict[str, Any]:
        return {"instance_number": None, "z_mm": self.z[index]}

    def histogram(self) -> Histogram:
        hist = Histogram()
        for k in range(self.n):
            hist.add(*np.unique(self.volume[k], return_counts=True))
        return hist

    def render(self, index: int, value_range: tuple[float, float] | None = None) -> Rendered:
        values = self.volume[index]
        if self.modality == "CT":
            windows = self.options.render.ct_windows
            return Rendered(
                pixels=ct_to_rgb(values, windows), info={"format": "volume", "intensity": describe_windows(windows)}
            )
        lo, hi = value_range if value_range else (values.min(), values.max())
        return Rendered(pixels=minmax_to_uint8(values, lo, hi), info={"format": "volume"})


def select_indices(
    source: SliceSource, options: VolumeOptions, report: str = "", series_number: str = ""
) -> tuple[list[int], str]:
    """(selected slice indices in order, how they were chosen)."""
    if options.selection == "all":
        return list(range(source.n)), "all"
    if options.selection == "report":
        numbers = [source.slice_info(i)["instance_number"] for i in range(source.n)]
        picked = report_indices(report, numbers, series_number)
        if picked:
            return picked[: options.max_slices], "report"
        return (
            uniform_indices(source.n, options.max_slices),
            "report→uniform (no slice of this series named in the report)",
        )
    return uniform_indices(source.n, options.max_slices), "uniform"


@dataclass(frozen=True)
class VolumePlan:
    """What rendering any one selected slice needs to know about the whole volume."""

    indices: tuple[int, ...]  # selected slices, in order (index into the ordered series)
    how: str  # how they were selected
    n_slices: int  # slices in the volume
    value_range: tuple[float, float] | None = None  # MR: the volume's range (CT: None, windows are fixed)
    intensity: str | None = None


def plan_volume(source: SliceSource, options: VolumeOptions, report: str = "", series_number: str = "") -> VolumePlan:
    """Check the modality, compute MR's volume range (one slice in memory at a time), select slices."""
    if source.modality not in VOLUME_MODALITIES:
        raise ItemError("transform", f"modality {source.modality or 'unknown'} is not CT or MR")
    value_range, intensity = None, None
    if source.modality == "MR":
        hist = source.histogram()
        if options.mr_normalization == "percentile":
            value_range = hist.percentiles(*options.mr_percentiles)
            intensity = f"percentile {options.mr_percentiles[0]:g}-{options.mr_percentiles[1]:g} of volume"
        else:
            value_range = hist.range()
            intensity = "minmax of volume"
    indices, how = select_indices(source, options, report, series_number)
    return VolumePlan(tuple(indices), how, source.n, value_range, intensity)


def finish_slice(
    source: SliceSource, options: VolumeOptions, plan: VolumePlan, n: int, volume_info: dict[str, Any] | None = None
) -> FinishedImage:
    """The n-th selected slice (from 1) of a planned volume -> finished image with its slice info."""
    index = plan.indices[n - 1]
    finished = finish_rendered(source.render(index, plan.value_range), options.image)
    finished.info.update(source.slice_info(index))
    finished.info.update(
        {"slice_index": index, "slice_label": f"SLICE {n}", "selection": plan.how, "volume_slices": plan.n_slices}
    )
    if plan.value_range is not None:
        finished.info["intensity"] = plan.intensity
        finished.info["value_range"] = [round(plan.value_range[0], 6), round(plan.value_range[1], 6)]
    if volume_info:
        finished.info["series"] = volume_info
    return finished


def prepare_volume(
    source: SliceSource,
    options: VolumeOptions,
    report: str = "",
    series_number: str = "",
    volume_info: dict[str, Any] | None = None,
) -> list[FinishedImage]:
    """Selected slices of a volume -> finished images, each with slice index/InstanceNumber/z in its info."""
    plan = plan_volume(source, options, report, series_number)
    return [finish_slice(source, options, plan, n, volume_info) for n in range(1, len(plan.indices) + 1)]


# ---- inference-time API ------------------------------------------------------------------------

SeriesSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str] | bytes | Dataset]


@dataclass
class PreparedSeries:
    """Model-ready slices of one series and the chat messages for a Hugging Face processor."""

    images: list[Image.Image]
    encoded: list[bytes]
    image_info: list[dict[str, Any]]
    messages: list[Message]
    series: dict[str, Any] = field(default_factory=dict)


def _read_header(item: str | os.PathLike[str] | bytes | bytearray | Dataset) -> tuple[Dataset | None, object]:
    """(the header of a DICOM image or None, the key its pixels load by): a file is read as the pipeline reads it."""
    if isinstance(item, Dataset):
        return (item if is_image_header(item) else None), item
    if isinstance(item, (bytes, bytearray)):
        return image_header(bytes(item)), bytes(item)
    path = os.fspath(item)
    try:
        with open(path, "rb") as fh:
            return image_header(fh, path), path
    except OSError:  # a folder or an unreadable file among many: skipped, as in the pipeline
        return None, path


def _file_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
        raise ItemError("read", f"cannot read {path}: {reason}") from None


def _load_full(key: Dataset | bytes | str) -> Dataset:
    if isinstance(key, Dataset):
        return key
    return read_dataset(key if isinstance(key, bytes) else _file_bytes(key))


def prepare_series(
    source: SeriesSource,
    prompt: str = "",
    report: str = "",
    options: VolumeOptions = VolumeOptions(),
    series_uid: str | None = None,
    modality: str = "",
    system_prompt: str = "",
) -> PreparedSeries:
    """A DICOM series (folder, paths, bytes or datasets) or a NIfTI path -> selected slices and messages.

    With several series in the input, `series_uid` picks one; by default the one with most slices.
    A NIfTI carries no modality: pass modality="CT" or "MR". `options` may be a run's InferenceOptions.
    """
    from medprep.transforms.inference import pick

    options, system_prompt = pick(options, "volume", system_prompt)
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        path = os.fspath(source)
        if path.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
            from medprep.transforms.nifti import read_nifti

            with open(path, "rb") as fh:
                volume, info = read_nifti(fh.read(), path)
            if modality.upper() not in VOLUME_MODALITIES:
                raise ItemError("transform", "a NIfTI input needs modality='CT' or 'MR'")
            src: SliceSource = ArrayVolumeSource(volume, modality.upper(), info["z_mm"], options.image)
            finished = prepare_volume(src, options, report)
            return _prepared(finished, prompt, {"format": info["format"]}, system_prompt)
        items: Sequence[str | os.PathLike[str] | bytes | Dataset] = [path]
    elif isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        items = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files)
    else:
        items = list(source)
    headers: list[SliceHeader] = []
    for item in items:
        ds, key = _read_header(item)
        if ds is not None:
            headers += slice_headers(ds, key)
    groups = group_series(headers)
    if not groups:
        raise no_series(len(items))
    uid = series_uid or max(groups, key=lambda u: len(groups[u]))
    if uid not in groups:
        raise ItemError("transform", f"series {uid} is not in the input")
    ordered = order_series(groups[uid], options.min_slices)
    src = DicomSeriesSource(ordered, _load_full, options.image)
    qc = ordered.qc()
    finished = prepare_volume(src, options, report, ordered.slices[0].series_number, qc)
    return _prepared(finished, prompt, qc, system_prompt)


def _prepared(finished: list[FinishedImage], prompt: str, series: dict[str, Any], system_prompt: str) -> PreparedSeries:
    images = cast(list[Image.Image], [f.image for f in finished])  # finished here: each has its image
    content = prompt_then_images(prompt, len(images), [f.info["slice_label"] for f in finished])
    return PreparedSeries(
        images,
        [f.encoded for f in finished],
        [f.info for f in finished],
        user_messages(content, images, system_prompt),
        series,
    )
