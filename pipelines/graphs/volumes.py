"""`medprep volumes`: CT/MR series + report -> one record per series (and/or per selected slice).

A manifest `image` is a folder or gs:// prefix holding one or more series, a list of DICOM
instances, or a NIfTI file (its `modality` column says CT or MR). Headers are read first
(no pixels); pixels are decoded only for the slices needed (all slices once for MR's
per-volume range), one at a time. Each series is planned once (order, QC, MR range, selection).
Where spreading one series over workers pays (fewer inputs than the processes that could share
its slices, or unknown off the local runner: medprep.pipelines.graphs.fan_out.fan_out_pays), its
selected slices are rendered in batches behind a Reshuffle and assembled per input, so one long
series does not sit on one worker (the rendered slices wait in part files in the staging folder, and only
references to them cross the grouping per input); elsewhere each input is planned, rendered and assembled
in one step (PrepareVolumes), which saves two shuffles and a write and read of the encoded slices. Both
run the same code per slice and give the same bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from pydicom.dataset import Dataset

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.dead_letter import count
from medprep.pipelines.graphs.fan_out import (
    ReadsStagedImages,
    UnitFailure,
    WorkDoFn,
    attempt_unit,
    batches,
    fan_out_pays,
    fan_out_pipeline,
    input_key,
    one_step_pipeline,
)
from medprep.pipelines.graphs.row_dofn import ManifestRowDoFn
from medprep.pipelines.io.fanout_parts import StagedImage, with_reference
from medprep.pipelines.io.manifest import resolve_ref
from medprep.pipelines.io.sources.dicomweb import client_for
from medprep.pipelines.io.sources.files import DEFAULT_MAX_INPUT_BYTES, open_input, read_bytes, read_head
from medprep.pipelines.records.example import ExampleParts, build_record, name_values, portable_ref, row_input_key
from medprep.transforms.dicom_io import header_from_json, image_header, no_series, read_dataset
from medprep.transforms.dicomweb_ref import DicomWebRef, parse_ref
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.formats import detect_format
from medprep.transforms.image import FinishedImage
from medprep.transforms.series import SliceHeader, group_series, order_series, series_attributes, slice_headers
from medprep.transforms.series_filter import matches, parse_filter
from medprep.transforms.volume import (
    ArrayVolumeSource,
    DicomSeriesSource,
    SliceSubset,
    VolumePlan,
    finish_slice,
    plan_volume,
    prepare_volume,
)

_LOG = logging.getLogger(__name__)


def list_files(ref: str) -> list[str]:
    """A file ref as itself; a folder or gs:// prefix as every file below it, sorted."""
    if FileSystems.exists(ref) and not FileSystems.match([ref.rstrip("/") + "/**"])[0].metadata_list:
        return [ref]
    matched = FileSystems.match([ref.rstrip("/") + "/**"])[0].metadata_list
    files = sorted(m.path for m in matched if not m.path.endswith("/"))
    if not files:
        raise ItemError("read", f"no files found at {ref}")
    return files


def read_header(path: str, limit: int = DEFAULT_MAX_INPUT_BYTES) -> Dataset | None:
    """The DICOM header (no pixel data) of a file, or None if it is not a DICOM image (dicom_io.image_header);
    only regular files of at most `limit` bytes are opened."""
    with open_input(path, "", limit) as fh:
        return image_header(fh, path)


def load_dataset(path: str, limit: int = DEFAULT_MAX_INPUT_BYTES) -> Dataset:
    """A whole DICOM instance (pixels included), at most `limit` bytes."""
    data = read_bytes(path, limit=limit)
    with stage("decode"):
        return read_dataset(data)


@dataclass(frozen=True)
class SeriesMeta:
    """What assembling one series' records needs, carried with each of its batches."""

    key: str  # SeriesInstanceUID (DICOM) or the file (NIfTI)
    modality: str
    patient_id: str
    study_uid: str
    identifiers: tuple = ()
    burned_in: bool = False
    plan: VolumePlan | None = None
    info: dict = field(default_factory=dict)  # image_info['series']: ordering and QC findings
    skipped: tuple = ()  # why the input's other series were left out at planning (summary.json counts them)


@dataclass(frozen=True)
class SliceBatch:
    """Some selected slices of one series, rendered together on one worker (RenderSlices' input)."""

    key: str  # the input's key (fan_out.input_key): its slices are assembled together
    row: dict  # the manifest row
    meta: SeriesMeta
    subset: SliceSubset | None  # the slices' headers; None when rendered at planning (NIfTI)
    numbers: tuple[int, ...] = ()  # the slices' places among the series' selected slices, from 1
    rendered: tuple[tuple[int, FinishedImage], ...] = ()  # NIfTI: (number, slice without pixels) rendered at planning

    @property
    def work_id(self) -> str:
        """The batch among its input's batches (names its fan-out part): its series and first slice."""
        return f"{self.meta.key}/{self.numbers[0] if self.numbers else 'rendered'}"


@dataclass(frozen=True)
class SliceResult:
    """One selected slice, rendered or failed (AssembleVolume's input, grouped by the input's key)."""

    row: dict
    meta: SeriesMeta
    number: int  # its place among the series' selected slices, from 1
    finished: FinishedImage | None  # without pixels; None when it failed
    failure: UnitFailure | None = None
    staged: StagedImage | None = None  # fan-out: where its encoded bytes wait (finished.encoded is then empty)

    def image(self) -> FinishedImage:
        """The rendered slice, its bytes or their reference (fanout_parts.with_reference) in `encoded`."""
        return with_reference(cast(FinishedImage, self.finished), self.staged)


def skip_reason(exc: ItemError) -> str:
    """A skipped series' reason as summary.json counts it: stage and message, numbers folded to '#'."""
    return f"{exc.stage}: " + re.sub(r"\d+(?:\.\d+)?", "#", exc.message)[:160]


class PlanVolumes(ManifestRowDoFn):
    """Manifest row -> per series: its plan (order, QC, MR range, selection) and the selected slices in
    batches of 8 (NIfTI volumes are rendered here, from memory); or one error line."""

    final = False

    def setup(self):
        super().setup()
        self.options = self.config.volume_options()
        self.filter = parse_filter(self.config.series_filter)

    def outputs(self, row):
        key = input_key(row)
        refs = [resolve_ref(ref, self.config.input) for ref in row["images"]]
        web = [parse_ref(r) for r in refs]
        headers: list[SliceHeader] = []
        skipped = 0
        files: list[str] = []
        for ref, w in zip(refs, web):
            if w is not None and not w.instance:  # DICOMweb study/series: one metadata request, no pixels
                for item in client_for(w.base).metadata(w):
                    ds = header_from_json(item)
                    url = DicomWebRef(w.base, w.study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)).url()
                    headers += slice_headers(ds, url)
                    files.append(url)
            else:
                files += list_files(ref) if w is None else [ref]
        local = [f for f in files if parse_ref(f) is None]
        if len(local) == 1 and not headers and detect_format(read_head(local[0]), local[0]) in ("nifti", "nrrd", "mha"):
            yield self._nifti(key, row, local[0]), {}
            return
        for path in (f for f in files if parse_ref(f) is None or f in refs):
            try:
                limit = self.config.max_input_bytes
                ds = (
                    read_header(path, limit)
                    if parse_ref(path) is None
                    else image_header(read_bytes(path, "", limit), path)
                )
            except Exception:  # an unreadable file among many: counted, the series goes on
                ds = None
            if ds is None:
                skipped += 1
                continue
            headers += slice_headers(ds, path)
        groups = group_series(headers)
        if not groups:
            raise no_series(len(files))
        failures: list[ItemError] = []
        planned: list = []
        for uid, slices in groups.items():
            first = slices[0]
            if not matches(self.filter, series_attributes(first)):
                failures.append(ItemError("transform", "not matched by --series_filter"))
                continue
            try:
                with stage("transform"):
                    ordered = order_series(slices, self.options.min_slices)
                    source = DicomSeriesSource(ordered, load_dataset, self.options.image)
                    plan = plan_volume(source, self.options, row["text"], first.series_number)
            except ItemError as exc:
                failures.append(exc)
                continue
            meta = SeriesMeta(
                uid,
                first.modality,
                first.patient_id,
                first.study_uid,
                tuple(first.identifiers),
                any(s.burned_in for s in slices),
                plan,
                dict(ordered.qc(), files_skipped=skipped),
            )
            planned += [
                (meta, SliceSubset.of(ordered, [plan.indices[n - 1] for n in numbers]), tuple(numbers))
                for numbers in batches(list(range(1, len(plan.indices) + 1)))
            ]
        if not planned:
            if any(f.message != "not matched by --series_filter" for f in failures):
                raise next(f for f in failures if f.message != "not matched by --series_filter")
            raise ItemError("transform", f"no series matched --series_filter {self.config.series_filter!r}")
        if failures:
            _LOG.warning("row %s: %d series skipped: %s", row["row"], len(failures), failures[0].message)
        reasons = tuple(skip_reason(f) for f in failures)
        for meta, subset, numbers in planned:
            yield SliceBatch(key, row, replace(meta, skipped=reasons), subset, numbers), {}

    def _nifti(self, key, row, path) -> SliceBatch:
        """A NIfTI/NRRD/MHA volume, rendered here (it is one array in memory): one batch of finished slices."""
        from medprep.transforms.nifti import read_nifti

        modality = row["modality"].upper()
        if modality not in ("CT", "MR"):
            raise ItemError("transform", "a NIfTI/NRRD/MHA volume needs the manifest's modality column set to CT or MR")
        volume, info = read_nifti(read_bytes(path, "", self.config.max_input_bytes), path)
        source = ArrayVolumeSource(volume, modality, info["z_mm"], self.options.image)
        finished = prepare_volume(source, self.options, row["text"], "", {**info, "z_mm": None})
        meta = SeriesMeta(row["images"][0], modality, row["patient_id"], "")  # named as written: moves with the data
        rendered = tuple((n, f.without_pixels()) for n, f in enumerate(finished, start=1))
        return SliceBatch(key, row, meta, None, rendered=rendered)


def render_batch(batch: SliceBatch, options, run_unit) -> Iterator[SliceResult]:
    """A SliceBatch's slices, each rendered by `run_unit(fn) -> (finished, failure)` (timed and counted by
    the caller), as SliceResults in the batch's order."""
    for n, finished in batch.rendered:  # rendered at planning (NIfTI)
        yield SliceResult(batch.row, batch.meta, n, finished)
    if batch.subset is None:
        return
    source = DicomSeriesSource(batch.subset, load_dataset, options.image)
    plan = cast(VolumePlan, batch.meta.plan)  # a planned DICOM series carries its plan
    for n in batch.numbers:
        finished, failure = run_unit(
            lambda n=n: finish_slice(source, options, plan, n, batch.meta.info).without_pixels()
        )
        yield SliceResult(batch.row, batch.meta, n, finished, failure)


class RenderSlices(WorkDoFn):
    """A SliceBatch -> (input key, SliceResult) per slice; the slices' encoded images go to the batch's
    fan-out part, and the results refer to them."""

    unit = "slice"

    def setup(self):
        self.options = self.config.volume_options()

    def process(self, element: SliceBatch):
        # assembly needs the series' names and flags, not its plan or QC (each slice's info holds those):
        # without them what is grouped per slice does not grow with the series
        meta = replace(element.meta, plan=None, info={})
        results = (replace(r, meta=meta) for r in render_batch(element, self.options, self.run_unit))
        yield from self.staged(element.key, element.work_id, results)


class SeriesAssembly:
    """Records from every rendered slice of one input (needs `self.config` and `self.tokenizer`).

    A series with a slice that failed is skipped (logged) and the others are kept; an input with
    no complete series is one error line.
    """

    config: Config
    tokenizer: Any

    def assemble(self, results: list[SliceResult]) -> Iterator[tuple[dict, dict]]:
        """Records of every complete series; the first carries the input's skipped-series counts."""
        skipped = list(results[0].meta.skipped)
        produced = list(self._series_records(results, skipped))
        counts: dict = {}
        for reason in skipped:
            counts[f"series_skipped/{reason}"] = counts.get(f"series_skipped/{reason}", 0) + 1
        for i, (record, stats) in enumerate(produced):
            yield record, ({**stats, **counts} if i == 0 else stats)

    def _series_records(self, results: list[SliceResult], skipped: list):
        row = results[0].row
        by_series: dict[str, list[SliceResult]] = {}
        for result in results:
            by_series.setdefault(result.meta.key, []).append(result)
        failures: list[ItemError] = []
        produced = 0
        for series_key in sorted(by_series):
            items = sorted(by_series[series_key], key=lambda result: result.number)
            meta = items[0].meta
            bad = [cast(UnitFailure, r.failure) for r in items if r.finished is None]  # a slice without image failed
            try:
                if bad:
                    raise bad[0].error()
                outs = list(self._records(row, meta, [r.image() for r in items]))
            except ItemError as exc:
                failures.append(exc)
                skipped.append(skip_reason(exc))
                continue
            produced += 1
            yield from outs
        if not produced:
            raise failures[0]
        if failures:
            _LOG.warning("row %s: %d series skipped: %s", row["row"], len(failures), failures[0].message)

    def _records(self, row, meta: SeriesMeta, finished):
        if not row["text"].strip():
            raise ItemError("text", "empty text: a volume example needs its report")
        base = row["id"] or f"row:{row['row']}:{'|'.join(row['images'])}"
        common = dict(
            modality=row["modality"] or meta.modality,
            prompt=row["prompt"],
            text=row["text"],
            patient_id=row["patient_id"] or meta.patient_id,
            study_uid=meta.study_uid,
            label=row["label"],
            identifiers=dict(meta.identifiers),
            burned_in=meta.burned_in,
            input_key=row_input_key(row),
            extra_names=name_values(row),
            layout="prompt_first",
        )
        sources = [self._source(row, f.info.pop("file", "")) for f in finished]
        if "series" in self.config.granularity:
            yield build_record(
                ExampleParts(
                    example_key=f"{base}#{meta.key}",
                    task="series",
                    images=finished,
                    sources=sources,
                    labels=[f.info["slice_label"] for f in finished],
                    **common,
                ),
                self.config,
                self.tokenizer,
            )
        if "slice" in self.config.granularity:
            for f, src in zip(finished, sources):
                yield build_record(
                    ExampleParts(
                        example_key=f"{base}#{meta.key}#{f.info['slice_index']}",
                        task="slice",
                        images=[f],
                        sources=[src],
                        **common,
                    ),
                    self.config,
                    self.tokenizer,
                )

    def _source(self, row, file: str) -> str:
        """A slice's file named from the manifest's reference (so it moves with the data), else the reference."""
        for written in row["images"]:
            resolved = resolve_ref(written, self.config.input)
            if file and (file == resolved or file.startswith(resolved.rstrip("/") + "/")):
                return portable_ref(file, written, resolved)
        return row["images"][0]


class AssembleVolume(ReadsStagedImages, SeriesAssembly, ManifestRowDoFn):
    """(input key, every rendered slice of its series) -> a record per series and/or per slice; the
    slices' images are read back from their fan-out parts one record at a time."""

    def ref_of(self, element):
        _, results = element
        row = results[0].row
        return row["images"][0], row["row"]

    def _timed_outputs(self, element):
        # the element is (key, slice results): the row's text sizes were checked when PlanVolumes planned it
        return super(ManifestRowDoFn, self)._timed_outputs(element)

    def outputs(self, element):
        _, results = element
        return self.assemble(results)


class PrepareVolumes(SeriesAssembly, PlanVolumes):
    """Manifest row -> its records in one step: plan every series, render its selected slices here,
    assemble (the graph where the fan-out does not pay). Slices are counted as in RenderSlices
    (`slices_done`, `slices_failed`); their stage times are the input's."""

    final = True

    concurrent_items = True  # per-input state lives in locals and count(): series may be prepared in threads

    def outputs(self, row):
        def run_unit(fn):
            finished, failure = attempt_unit(fn)
            count("slices_failed" if failure is not None else "slices_done")
            return finished, failure

        results = [
            result
            for batch, _ in PlanVolumes.outputs(self, row)
            for result in render_batch(batch, self.options, run_unit)
        ]
        return self.assemble(results)


def images_per_input(config: Config) -> int:
    """Images one input is expected to give (sizes the shards before any record exists)."""
    return config.max_slices * len(config.granularity)


def build(p: beam.Pipeline, config: Config):
    """The volumes pipeline graph: per input, in one step or fanned out over workers (see the module docstring)."""
    units = config.max_slices if config.slice_selection != "all" else 10**6  # 'all' takes every slice
    if fan_out_pays(p.options, config.expected_inputs, units):
        return fan_out_pipeline(
            p,
            "volumes",
            config,
            PlanVolumes(config),
            RenderSlices(config),
            AssembleVolume(config),
            "RenderSlices",
            per_series=True,
            images_per_input=images_per_input(config),
        )
    return one_step_pipeline(
        p, "volumes", config, PrepareVolumes(config), per_series=True, images_per_input=images_per_input(config)
    )
