"""`medprep slides`: whole-slide images -> slide-level (up to K patches) and/or patch-level records.

Plan once per slide (level for --target_mpp, tissue on a ~1.25x thumbnail, grid, seeded sample),
then fan the patch coordinates out in batches behind a Reshuffle, so one huge slide spreads over
workers; each worker keeps its slides open (a small cache) and reads only its patches — never a
whole level, no patch twice. A batch's encoded patches go to a part file in the staging folder where
they are read, and only references to them cross the GroupByKey per slide; the records are assembled
there, which is also where an input is counted done (the graph is medprep.pipelines.graphs.fan_out's),
and each record's patches are read back from the parts as it is handed on, one record at a time. A
patch that cannot be read is counted and logged; a slide with no readable patch is one error line.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import cast

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.fan_out import (
    ReadsStagedImages,
    UnitFailure,
    WorkDoFn,
    batches,
    failure_of,
    fan_out_pipeline,
    input_key,
)
from medprep.pipelines.graphs.row_dofn import ManifestRowDoFn
from medprep.pipelines.io.fanout_parts import StagedImage, with_reference
from medprep.pipelines.io.manifest import resolve_ref
from medprep.pipelines.io.sources.dicomweb import wsi_web_client
from medprep.pipelines.io.sources.files import LocalFile, RemoteStreams, localize_file
from medprep.pipelines.records.example import ExampleParts, build_record, name_values, row_input_key
from medprep.transforms.dicomweb_ref import parse_ref
from medprep.transforms.errors import ItemError, stage
from medprep.transforms.image import FinishedImage
from medprep.transforms.patches import Patch
from medprep.transforms.slide import SlidePlan, plan_slide, read_patch
from medprep.transforms.slide_reader import SlideReader, open_slide, open_web_wsi, open_wsi_streams

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchBatch:
    """Some planned patches of one slide, read together on one worker (ReadPatches' input)."""

    key: str  # the input's key (fan_out.input_key): its patches are assembled together
    row: dict  # the manifest row
    info: dict  # the slide plan's info (level, resolution, tissue…), in every image_info
    total: int  # patches planned for the slide
    patches: tuple[tuple[int, Patch], ...]  # (index in the plan, patch)

    @property
    def work_id(self) -> str:
        """The batch among its slide's batches (names its fan-out part): its first patch's index in the plan."""
        return str(self.patches[0][0])


@dataclass(frozen=True)
class PatchResult:
    """One planned patch, read or failed (AssembleSlide's input, grouped by the input's key)."""

    row: dict
    info: dict
    total: int
    index: int  # its index in the plan
    finished: FinishedImage | None  # without pixels; None when it failed
    failure: UnitFailure | None = None
    staged: StagedImage | None = None  # where its encoded bytes wait (finished.encoded is then empty)

    def image(self) -> FinishedImage:
        """The patch image, its bytes or their reference (fanout_parts.with_reference) in `encoded`."""
        return with_reference(cast(FinishedImage, self.finished), self.staged)


class _Readers:
    """A few open slides per worker (tifffile, OpenSlide and wsidicom handles are not shared across processes)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._open: OrderedDict[tuple, tuple[LocalFile | RemoteStreams, SlideReader]] = OrderedDict()

    def get(self, path: str, assume, override) -> SlideReader:
        key = (path, assume, override)  # the same file with another resolution is another reader
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key][1]
        web = parse_ref(path)
        local: LocalFile | RemoteStreams
        if web is not None:  # a DICOM WSI series on a DICOMweb server: frames fetched as read
            local = LocalFile(path, False)
            reader = open_web_wsi(path, wsi_web_client(web.base), assume, override)
        elif "://" in path and not FileSystems.exists(path):  # an object-store prefix: a DICOM WSI folder
            local = RemoteStreams(path)  # ranged reads: only the frames needed
            try:
                reader = open_wsi_streams(local.streams, assume, override)
            except ItemError:
                local.cleanup()
                raise
        elif "://" not in path and os.path.isdir(path):  # a local DICOM WSI folder: read in place
            local = LocalFile(path, False)
            reader = open_slide(path, assume, override)
        else:
            local = localize_file(path)  # a slide file (local: checked to be a regular file; gs://: copied)
            reader = open_slide(local.path, assume, override)
        self._open[key] = (local, reader)
        while len(self._open) > self.size:
            _, (old_local, old) = self._open.popitem(last=False)
            old.close()
            old_local.cleanup()
        return reader

    def close(self) -> None:
        while self._open:
            _, (local, reader) = self._open.popitem()
            reader.close()
            local.cleanup()


class PlanSlides(ManifestRowDoFn):
    """Manifest row -> batches of patch coordinates (or one error line)."""

    final = False

    def setup(self):
        super().setup()
        self.readers = _Readers()

    def teardown(self):
        self.readers.close()

    def outputs(self, row):
        path = resolve_ref(row["images"][0], self.config.input)
        options = self.config.slide_options(row.get("mpp"))
        with stage("decode"):
            reader = self.readers.get(path, options.assume_mpp, options.override_mpp)
        plan: SlidePlan = plan_slide(reader, options)
        patches = [(i, p) for i, p in enumerate(plan.patches)]
        for batch in batches(patches):
            yield PatchBatch(input_key(row), row, plan.info, len(patches), tuple(batch)), {}


class ReadPatches(WorkDoFn):
    """A PatchBatch -> (input key, PatchResult) per patch; the patches' encoded images go to the batch's
    fan-out part, and the results refer to them."""

    unit = "patch"

    def setup(self):
        self.readers = _Readers()

    def teardown(self):
        self.readers.close()

    def process(self, element: PatchBatch):
        yield from self.staged(element.key, element.work_id, self._results(element))

    def _results(self, batch: PatchBatch):
        path = resolve_ref(batch.row["images"][0], self.config.input)
        options = self.config.slide_options(batch.row.get("mpp"))
        try:
            reader = self.readers.get(path, options.assume_mpp, options.override_mpp)
        except Exception as exc:  # the slide vanished or broke between planning and reading
            for index, _ in batch.patches:
                yield PatchResult(batch.row, batch.info, batch.total, index, None, failure_of(exc))
            return
        for index, patch in batch.patches:
            finished, failure = self.run_unit(
                lambda patch=patch: read_patch(reader, batch.info["level"], patch, options).without_pixels()
            )
            if failure:
                failure = replace(failure, message=f"patch at ({patch.x}, {patch.y}): {failure.message}")
            yield PatchResult(batch.row, batch.info, batch.total, index, finished, failure)


class AssembleSlide(ReadsStagedImages, ManifestRowDoFn):
    """(slide row, patch results) -> slide-level and/or patch-level records; counts the input done. The
    records are built with references to the patches and read back one record at a time."""

    def ref_of(self, element):
        _, results = element
        row = next(iter(results)).row
        return row["images"][0], row["row"]

    def _timed_outputs(self, element):
        # the element is (key, patch results): the row's text sizes were checked when PlanSlides planned it
        return super(ManifestRowDoFn, self)._timed_outputs(element)

    def outputs(self, element):
        _, results = element
        results = sorted(results, key=lambda r: r.index)
        row, info = results[0].row, results[0].info
        good = [(r.index, r.image()) for r in results if r.finished is not None]
        failed = [r.failure.message for r in results if r.finished is None]
        if not good:
            raise ItemError("decode", f"no patch of the slide could be read ({len(failed)} tried): {failed[0]}")
        if failed:
            _LOG.warning("row %s: %d patch(es) unreadable, e.g. %s", row["row"], len(failed), failed[0])
        if not row["text"].strip():
            raise ItemError("text", "empty text: a slide example needs its text")
        base = row["id"] or f"row:{row['row']}:{row['images'][0]}"
        common = dict(
            modality=row["modality"] or "SM",
            prompt=row["prompt"],
            text=row["text"],
            patient_id=row["patient_id"],
            label=row["label"],
            input_key=row_input_key(row),
            extra_names=name_values(row),
            layout="prompt_first",
        )
        for _, f in good:
            f.info["slide"] = info
        k = self.config.patches_per_example
        if "slide" in self.config.slide_granularity:
            for start in range(0, len(good), k):
                chunk = [f for _, f in good[start : start + k]]
                yield self._with_failures(
                    build_record(
                        ExampleParts(
                            example_key=f"{base}#slide{start // k}",
                            task="slide",
                            images=chunk,
                            sources=[row["images"][0]] * len(chunk),
                            **common,
                        ),
                        self.config,
                        self.tokenizer,
                    ),
                    len(failed) if start == 0 else 0,
                )
        if "patch" in self.config.slide_granularity:
            for index, f in good:
                yield self._with_failures(
                    build_record(
                        ExampleParts(
                            example_key=f"{base}#patch{index}",
                            task="patch",
                            images=[f],
                            sources=[row["images"][0]],
                            **common,
                        ),
                        self.config,
                        self.tokenizer,
                    ),
                    0,
                )

    @staticmethod
    def _with_failures(built, failures: int):
        record, stats = built
        if failures:
            stats = dict(stats, **{"patches/unreadable": failures})
        return record, stats


def build(p: beam.Pipeline, config: Config):
    """The slides pipeline graph."""
    return fan_out_pipeline(
        p,
        "slides",
        config,
        PlanSlides(config),
        ReadPatches(config),
        AssembleSlide(config),
        "ReadPatches",
        images_per_input=config.max_patches * len(config.slide_granularity),
        discover=False,
    )
