"""DICOMweb references, parsed by one pattern: `{base}/studies/{S}`, `…/series/{SE}`, `…/instances/{I}`.

The base is everything before the first `/studies/` that leaves a valid reference (the service
root: a Google Cloud Healthcare store path, Orthanc's `/dicom-web`, …). The slide reader (a DICOM
WSI series) and the pipelines' DICOMweb client (pipelines.io.sources.dicomweb) both use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REF = re.compile(
    r"^(?P<base>https?://.+?)/studies/(?P<study>[^/]+)"
    r"(?:/series/(?P<series>[^/]+)(?:/instances/(?P<instance>[^/]+))?)?/?$"
)


@dataclass(frozen=True)
class DicomWebRef:
    """A parsed DICOMweb URL: base plus study, optional series and instance UIDs."""

    base: str
    study: str
    series: str | None = None
    instance: str | None = None

    def url(self) -> str:
        """The resource URL."""
        out = f"{self.base}/studies/{self.study}"
        if self.series:
            out += f"/series/{self.series}"
        if self.instance:
            out += f"/instances/{self.instance}"
        return out

    @property
    def is_series(self) -> bool:
        """True for a series reference (not a study, not an instance)."""
        return bool(self.series) and not self.instance


def parse_ref(ref: str) -> DicomWebRef | None:
    """The DICOMweb reference in `ref`, or None if it is not one."""
    m = _REF.match(ref)
    return DicomWebRef(m["base"], m["study"], m["series"], m["instance"]) if m else None
