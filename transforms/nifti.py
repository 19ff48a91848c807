"""Volumes through SimpleITK (NIfTI .nii/.nii.gz, NRRD .nrrd, MetaImage .mha), reoriented so slices
are axial, superior→inferior.

Values are the file's scaled values (scl_slope/scl_inter applied: HU for CT). Each slice is
(rows = anterior→posterior, columns = patient right→left), the radiological display convention.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from medprep.transforms.errors import ItemError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def volume_suffix(data: bytes, name: str) -> str:
    """The SimpleITK file suffix for these bytes: from the name, else from the content."""
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if lower.endswith(suffix):
            return suffix
    if data[:4] == b"NRRD":
        return ".nrrd"
    if data[:2] == b"\x1f\x8b":
        return ".nii.gz"
    return ".mha" if b"ObjectType" in data[:200] else ".nii"


def read_nifti(data: bytes, name: str = "volume.nii.gz") -> tuple[np.ndarray, dict[str, Any]]:
    """Volume bytes (NIfTI, NRRD, MHA) -> (float64 (slices, rows, cols) superior→inferior, info in mm)."""
    import SimpleITK as sitk

    suffix = volume_suffix(data, name)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "volume" + suffix)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as exc:
            # SimpleITK names our temp file; report the user's name so error lines are reproducible
            reason = str(exc).strip().splitlines()[-1].replace(path, os.path.basename(name))[:300]
            raise ItemError("decode", f"cannot read {suffix} volume (NIfTI/NRRD/MHA): {reason}") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ItemError("decode", f"volume must be 3D, got {image.GetDimension()}D {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ItemError("decode", "volumes with vector pixels are not supported")
    image = sitk.DICOMOrient(image, "LPS")  # index x→Left, y→Posterior, z→Superior
    volume = sitk.GetArrayViewFromImage(image).astype(np.float64)[::-1]  # (z, y, x), z now S→I
    sx, sy, sz = image.GetSpacing()
    top = image.GetOrigin()[2] + sz * (volume.shape[0] - 1)
    info = {
        "format": suffix.lstrip(".").replace(".gz", ""),
        "spacing_mm": [round(sz, 6), round(sy, 6), round(sx, 6)],
        "z_mm": [round(top - k * sz, 6) for k in range(volume.shape[0])],
    }
    return volume, info
