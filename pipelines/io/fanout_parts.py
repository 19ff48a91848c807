"""Fan-out parts: the encoded images of one fan-out work item, staged where they are rendered.

A fan-out's Work step (medprep.pipelines.graphs.fan_out) renders a batch of units (slices, patches)
of one input; their encoded bytes go to one part file in the run's staging folder, and only a
`StagedImage` (part, offset, size, checksum) per unit crosses the fan-in GroupByKey. The assembly
builds its records with these references in place of the bytes, then reads each record's bytes
back just before handing it on (`read_back`), so neither the shuffle nor one worker ever holds all of
an input's images: at most one record's.

A part is named from the input's key and the work item's id (`part_name`), so a retried work item
overwrites its own part; it is written all or nothing (outputs.write_via_local: a local temp file,
then a rename or one upload). The parts live under the staging folder's record parts
(sinks.PARTS_FOLDER), which the dataset writer removes before summary.json is written: the commit
never installs them, and a failed run leaves them inside its staging folder only.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from apache_beam.utils.windowed_value import WindowedValue

from medprep.pipelines.io.outputs import join, write_via_local
from medprep.pipelines.io.sinks import PARTS_FOLDER, PartReader, StagedRecord
from medprep.transforms.image import FinishedImage

FAN_OUT_FOLDER = "fan-out"  # under the staging folder's PARTS_FOLDER
T = TypeVar("T")


def fan_out_dir(write_dir: str) -> str:
    """The folder of a run's fan-out parts (inside its staging folder, removed with the record parts)."""
    return join(write_dir, PARTS_FOLDER, FAN_OUT_FOLDER)


def part_name(input_key: str, work_id: str) -> str:
    """A work item's part: named from its input's key and its id among that input's work items only,
    so a retried work item writes the same name (and no reference or path shows in it)."""
    return hashlib.sha256(f"{input_key}\n{work_id}".encode()).hexdigest()[:32] + ".images"


@dataclass(frozen=True)
class StagedImage:
    """Where one unit's encoded image waits for its record: bytes [offset, offset + size) of a part.

    It stands in for the bytes in a record until `read_back`; len() is the image's size, as the
    bytes' own would be (the per-record metrics count it). crc32 catches a part that does not hold
    what this reference was made from (a work item re-run differently after its results were used)."""

    part: str
    offset: int
    size: int
    crc32: int

    def __len__(self) -> int:
        return self.size


def stage_units(
    parts_dir: str, name: str, units: Iterable[tuple[T, bytes | None]]
) -> list[tuple[T, StagedImage | None]]:
    """Write the encoded bytes of each (unit, bytes) to the part `name` under parts_dir, one unit at a time
    as `units` yields them (None: the unit failed, nothing written); the units with their references.

    The part is complete and in place when this returns, so a reference is never handed on before its bytes."""
    staged: list[tuple[T, StagedImage | None]] = []

    def write(local: str) -> None:
        offset = 0
        with open(local, "wb") as fh:
            for unit, data in units:
                if data is None:
                    staged.append((unit, None))
                    continue
                fh.write(data)
                staged.append((unit, StagedImage(name, offset, len(data), zlib.crc32(data))))
                offset += len(data)

    write_via_local(join(parts_dir, name), write)
    return staged


def with_reference(finished: FinishedImage, ref: StagedImage | None) -> FinishedImage:
    """A staged image with its reference in place of its bytes (build_record carries it into the record's
    `images`, where read_back replaces it by the bytes); an image not staged (ref None) as it is."""
    return finished if ref is None else replace(finished, encoded=cast(bytes, ref))


class ImageReader:
    """Reads staged images back (sinks.PartReader: a few parts open at a time, ranged reads on object stores)."""

    def __init__(self, parts_dir: str):
        self.reader = PartReader(parts_dir)

    def read(self, ref: StagedImage) -> bytes:
        data = self.reader.read(StagedRecord("", "", ref.part, ref.offset, ref.size))
        if zlib.crc32(data) != ref.crc32:
            raise OSError(f"fan-out part {ref.part} does not hold the image at byte {ref.offset} it was staged with")
        return data

    def record(self, record: dict) -> dict:
        """The record with its staged images read back (images that are bytes already stay as they are)."""
        images = [self.read(image) if isinstance(image, StagedImage) else image for image in record["images"]]
        return {**record, "images": images}

    def close(self) -> None:
        self.reader.close()


def read_back(outputs: Iterable[Any], parts_dir: str) -> Iterator[Any]:
    """A DoFn's outputs with every record's staged images read back, one record at a time (a record as it
    is, or in a WindowedValue); tagged outputs (error lines, stats) pass as they are."""
    reader = ImageReader(parts_dir)
    try:
        for out in outputs:
            if isinstance(out, WindowedValue) and _is_record(out.value):
                yield out.with_value(reader.record(out.value))
            else:
                yield reader.record(out) if _is_record(out) else out
    finally:
        reader.close()


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and "images" in value
