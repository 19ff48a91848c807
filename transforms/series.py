"""Series assembly from DICOM headers: group by SeriesInstanceUID, order slices, report problems.

Positions are in mm (patient coordinates, LPS). Order is anatomical and fixed: axial series
superior→inferior, sagittal right→left, coronal anterior→posterior (by the dominant axis of
the slice normal, cross(row cosines, column cosines)). InstanceNumber is the fallback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from pydicom.dataset import Dataset

from medprep.transforms.dicom_io import header_identifiers
from medprep.transforms.errors import ItemError


@dataclass(frozen=True)
class SliceHeader:
    """What ordering needs from one slice (a single-frame instance or one frame of a multi-frame one)."""

    key: object  # caller's handle to load the pixels (path, index…)
    frame: int
    series_uid: str
    series_number: str
    instance_number: int | None
    position: tuple[float, ...] | None  # ImagePositionPatient (mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 direction cosines)
    rows: int
    columns: int
    localizer: bool
    modality: str
    description: str
    image_type: str = ""
    thickness: float | None = None
    patient_id: str = field(default="", repr=False)  # raw identifiers: hashed before any output
    study_uid: str = field(default="", repr=False)
    identifiers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (keyword, value) pairs for scrubbing
    burned_in: bool = False


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _float_or_none(value: Any) -> float | None:
    one = _floats([value], 1)
    return one[0] if one else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _plane(ds: Dataset) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    return _floats(ds.get("ImagePositionPatient"), 3), _floats(ds.get("ImageOrientationPatient"), 6)


def slice_headers(ds: Dataset, key: object) -> list[SliceHeader]:
    """Headers of one instance: one per frame for multi-frame (Enhanced CT/MR) objects."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    common: dict[str, Any]  # keyword arguments of every SliceHeader of this instance
    common = dict(
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=str(ds.get("SeriesNumber", "") or ""),
        rows=_int_or_none(ds.get("Rows")) or 0,
        columns=_int_or_none(ds.get("Columns")) or 0,
        localizer="LOCALIZER" in image_type,
        modality=str(ds.get("Modality", "") or "").upper(),
        description=str(ds.get("SeriesDescription", "") or ""),
        image_type="\\".join(image_type),
        thickness=_float_or_none(ds.get("SliceThickness")),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        identifiers=tuple(header_identifiers(ds).items()),
        burned_in=str(ds.get("BurnedInAnnotation", "")).upper() == "YES",
    )
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    instance = _int_or_none(ds.get("InstanceNumber"))
    if frames == 1 or "PerFrameFunctionalGroupsSequence" not in ds:
        pos, ori = _plane(ds)
        return [SliceHeader(key, 0, instance_number=instance, position=pos, orientation=ori, **common)]
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    out = []
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos_seq = item.get("PlanePositionSequence") or shared_item.get("PlanePositionSequence")
        ori_seq = item.get("PlaneOrientationSequence") or shared_item.get("PlaneOrientationSequence")
        pos = _floats(pos_seq[0].get("ImagePositionPatient"), 3) if pos_seq else None
        ori = _floats(ori_seq[0].get("ImageOrientationPatient"), 6) if ori_seq else None
        content = item.get("FrameContentSequence")
        number = _int_or_none(content[0].get("InStackPositionNumber")) if content else None
        out.append(
            SliceHeader(
                key, i, instance_number=number if number is not None else i + 1, position=pos, orientation=ori, **common
            )
        )
    return out


def series_attributes(header: SliceHeader) -> dict[str, Any]:
    """The attributes series filters test (medprep.transforms.series_filter.ATTRIBUTES)."""
    return {
        "SeriesDescription": header.description,
        "ImageType": header.image_type,
        "SliceThickness": header.thickness,
        "Modality": header.modality,
        "SeriesNumber": header.series_number,
    }


def group_series(headers: list[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Headers grouped by SeriesInstanceUID, in first-seen order."""
    groups: dict[str, list[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    return groups


@dataclass
class OrderedSeries:
    """Slices in anatomical order with their positions along the ordering axis and QC findings."""

    slices: list[SliceHeader]
    z: list[float]  # slice location: position · normal in mm (0 for instance-number order)
    order_by: str  # "position" | "instance_number"
    spacing: float | None  # median step (mm)
    duplicates: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count
    irregular_spacing: bool = False

    @property
    def modality(self) -> str:
        """The series' modality (from its first slice)."""
        return self.slices[0].modality

    def qc(self) -> dict[str, Any]:
        """JSON-ready findings, as stored in image_info['series']."""
        return {
            "order_by": self.order_by,
            "slices": len(self.slices),
            "spacing_mm": None if self.spacing is None else round(self.spacing, 4),
            "duplicates_removed": self.duplicates,
            "gaps": self.gaps,
            "excluded": dict(sorted(self.excluded.items())),
            "irregular_spacing": self.irregular_spacing,
        }


_AXIS_SIGN = {0: 1.0, 1: 1.0, 2: -1.0}  # sagittal R→L (+x), coronal A→P (+y), axial S→I (−z)


def _majority(
    slices: list[SliceHeader], key: Callable[[SliceHeader], Hashable], reason: str, excluded: dict[str, int]
) -> list[SliceHeader]:
    counts = Counter(key(s) for s in slices)
    if len(counts) <= 1:
        return slices
    ((top, n),) = counts.most_common(1)
    if n * 2 <= len(slices):
        raise ItemError("transform", f"no majority {reason}: {dict(counts)}")
    excluded[f"other_{reason}"] = len(slices) - n
    return [s for s in slices if key(s) == top]


def order_series(slices: list[SliceHeader], min_slices: int = 2) -> OrderedSeries:
    """Order one series' slices and report duplicates, gaps, localizers, mixed orientation/size."""
    excluded: dict[str, int] = {}
    kept = [s for s in slices if not s.localizer]
    if len(kept) < len(slices):
        excluded["localizer"] = len(slices) - len(kept)
    if not kept:
        raise ItemError("transform", "series is empty (no non-localizer slices)")
    kept = _majority(kept, lambda s: (s.rows, s.columns), "matrix size", excluded)
    have_plane = all(s.position is not None and s.orientation is not None for s in kept)
    # with have_plane, no position or orientation is None
    if have_plane:
        kept = _majority(
            kept, lambda s: tuple(round(c, 3) for c in cast(tuple[float, ...], s.orientation)), "orientation", excluded
        )
    if len(kept) < min_slices:
        raise ItemError(
            "transform",
            f"series has {len(kept)} usable slice(s); at least {min_slices} needed "
            "(use `medprep images` for single images)",
        )
    if have_plane:
        ori = np.array(kept[0].orientation)
        normal = np.cross(ori[:3], ori[3:])
        axis = int(np.argmax(np.abs(normal)))
        sign = float(np.sign(normal[axis]) * _AXIS_SIGN[axis])
        keyed: list[tuple[float, int | None, int, SliceHeader]] = sorted(
            (
                (sign * float(np.dot(cast(tuple[float, ...], s.position), normal)), s.instance_number or 0, i, s)
                for i, s in enumerate(kept)
            ),
            key=lambda t: t[:3],
        )
        order_by = "position"
    else:
        if any(s.instance_number is None for s in kept):
            raise ItemError(
                "transform",
                "slices lack ImagePositionPatient/ImageOrientationPatient and InstanceNumber: cannot order the series",
            )
        sign = 0.0
        keyed = sorted(((0.0, s.instance_number, i, s) for i, s in enumerate(kept)), key=lambda t: t[1:3])
        order_by = "instance_number"
    ordered: list[SliceHeader] = []
    z: list[float] = []
    duplicates = 0
    for key, _, _, s in keyed:
        location = key * sign  # back to position · normal
        if order_by == "position" and z and abs(location - z[-1]) < 1e-3:
            duplicates += 1
            continue
        ordered.append(s)
        z.append(location)
    if len(ordered) < min_slices:
        raise ItemError(
            "transform", f"series has {len(ordered)} distinct slice position(s); at least {min_slices} needed"
        )
    spacing: float | None = None
    gaps: list[dict[str, Any]] = []
    irregular = False
    if order_by == "position":
        steps = np.abs(np.diff(z))
        spacing = float(np.median(steps))
        for i, step in enumerate(steps):
            if step > 1.5 * spacing:
                gaps.append(
                    {
                        "after_index": i,
                        "gap_mm": round(float(step), 4),
                        "missing_estimate": int(round(step / spacing)) - 1,
                    }
                )
        irregular = bool(np.any(np.abs(steps - spacing) > 0.1 * spacing))
    return OrderedSeries(ordered, [round(v, 6) for v in z], order_by, spacing, duplicates, gaps, excluded, irregular)
