"""NIfTI (.nii, .nii.gz) volumes through SimpleITK, reoriented so slices are axial, superior→inferior.

Values are the file's scaled values (scl_slope/scl_inter applied: HU for CT). Each slice is
(rows = anterior→posterior, columns = patient right→left), the radiological display convention.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from transforms.errors import ItemError


def read_nifti(data: bytes, name: str = "volume.nii.gz") -> tuple[np.ndarray, dict]:
    """NIfTI bytes -> (float64 (slices, rows, cols) superior→inferior, info with spacing and z in mm)."""
    import SimpleITK as sitk

    suffix = ".nii.gz" if name.lower().endswith(".gz") or data[:2] == b"\x1f\x8b" else ".nii"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "volume" + suffix)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as exc:
            # SimpleITK names our temp file; report the user's name so error lines are reproducible
            reason = str(exc).strip().splitlines()[-1].replace(path, os.path.basename(name))[:300]
            raise ItemError("decode", f"cannot read NIfTI: {reason}") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ItemError("decode", f"NIfTI must be a 3D volume, got {image.GetDimension()}D {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ItemError("decode", "NIfTI with vector pixels is not supported")
    image = sitk.DICOMOrient(image, "LPS")      # index x→Left, y→Posterior, z→Superior
    volume = sitk.GetArrayViewFromImage(image).astype(np.float64)[::-1]   # (z, y, x), z now S→I
    sx, sy, sz = image.GetSpacing()
    top = image.GetOrigin()[2] + sz * (volume.shape[0] - 1)
    info = {"format": "nifti", "spacing_mm": [round(sz, 6), round(sy, 6), round(sx, 6)],
            "z_mm": [round(top - k * sz, 6) for k in range(volume.shape[0])]}
    return volume, info
