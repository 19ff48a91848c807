"""Generate the bundled demo samples: synthetic CXR DICOMs, fundus and skin photos, pydicom's files.

Everything is deterministic (fixed seeds and UIDs). The synthetic DICOMs carry fake patient
identifiers on purpose, so privacy checks have something to look for.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"


def fake_identity(n: int) -> dict:
    """Planted, obviously fake identifiers for synthetic patient n."""
    return {
        "PatientName": f"DOE^JANE{n:03d}",
        "PatientID": f"MRN-CANARY-{n:05d}",
        "PatientBirthDate": "19700101",
        "AccessionNumber": f"ACC-CANARY-{n:05d}",
    }


def write_dicom(
    path: str,
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    patient: int = 1,
    study: int = 1,
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    extra: dict | None = None,
) -> str:
    """Write a single-frame uncompressed DICOM (uint16/int16 greyscale or uint8 RGB) to `path`."""
    ds = Dataset()
    meta = FileMetaDataset()
    sop_class = {"CR": CR_SOP_CLASS}.get(modality, DX_SOP_CLASS)
    sop_uid = generate_uid(entropy_srcs=[path.split(os.sep)[-1], modality, str(patient), str(study)])
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.Modality = modality
    for key, value in fake_identity(patient).items():
        setattr(ds, key, value)
    ds.InstitutionName = "CANARY GENERAL HOSPITAL"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(patient), str(study)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(patient), str(study), modality])
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        data = np.ascontiguousarray(pixels, dtype=np.uint8)
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        data = np.ascontiguousarray(pixels, dtype=np.int16 if ds.PixelRepresentation else np.uint16)
        if slope != 1.0 or intercept != 0.0 or modality == "CT":
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = data.tobytes()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_cxr(
    width: int = 880, height: int = 1024, seed: int = 0, nodule: tuple[int, int, int] | None = None
) -> np.ndarray:
    """A chest-radiograph-like uint16 image (12-bit values): body, lungs, mediastinum, ribs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2, height / 2
    img = np.full((height, width), 300.0, np.float32)
    body = ((x - cx) / (0.46 * width)) ** 2 + ((y - cy) / (0.52 * height)) ** 2 < 1
    img[body] = 2600
    for side in (-1, 1):
        lung = ((x - cx - side * 0.2 * width) / (0.15 * width)) ** 2 + (
            (y - cy + 0.03 * height) / (0.33 * height)
        ) ** 2 < 1
        img[lung] = 900
    heart = ((x - cx + 0.04 * width) / (0.12 * width)) ** 2 + ((y - cy - 0.12 * height) / (0.13 * height)) ** 2 < 1
    img[heart] = 2400
    for k in range(8):
        rib = np.abs(y - (0.22 * height + k * 0.075 * height) - 0.02 * np.abs(x - cx)) < 6
        img[rib & body] += 600
    if nodule:
        nx, ny, r = nodule
        img[(x - nx) ** 2 + (y - ny) ** 2 < r * r] = 2200
    img += rng.normal(0, 25, img.shape).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def synthetic_fundus(size: int = 640, seed: int = 0) -> np.ndarray:
    """A fundus-photo-like RGB uint8 image: orange disc, bright optic disc, dark vessels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    r = np.hypot(x - c, y - c)
    img = np.zeros((size, size, 3), np.float32)
    inside = r < 0.46 * size
    shade = 1 - 0.5 * (r / (0.46 * size)) ** 2
    img[inside] = np.array([200, 90, 40], np.float32) * shade[inside, None]
    disc = np.hypot(x - 0.68 * size, y - 0.5 * size) < 0.07 * size
    img[disc] = (250, 220, 150)
    for angle in np.linspace(0, 2 * np.pi, 7, endpoint=False):
        d = np.abs((y - 0.5 * size) * np.cos(angle) - (x - 0.68 * size) * np.sin(angle))
        img[(d < 3) & inside & ~disc] *= 0.55
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_skin(width: int = 600, height: int = 450, seed: int = 0) -> np.ndarray:
    """A dermatology-photo-like RGBA uint8 image: skin tone, a brown lesion, transparent corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 4), np.float32)
    img[..., :3] = (224, 180, 150)
    lesion = ((x - 0.55 * width) / 60) ** 2 + ((y - 0.5 * height) / 45) ** 2 < 1
    img[lesion, :3] = (110, 70, 45)
    img[..., 3] = 255
    img[:40, :40, 3] = 0
    img[..., :3] += rng.normal(0, 5, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def save_jpeg_with_orientation(path: str, rgb: np.ndarray, orientation: int) -> str:
    """Save RGB as JPEG whose pixels are stored rotated, with the EXIF Orientation that undoes it."""
    img = Image.fromarray(rgb)
    stored = {1: img, 3: img.rotate(180), 6: img.rotate(90, expand=True), 8: img.rotate(-90, expand=True)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def _pydicom_file(name: str, dest: str) -> str:
    src = get_testdata_file(name)
    if src is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    shutil.copyfile(src, dest)
    return dest


def make_images_samples(folder: str) -> str:
    """Write the 2D sample files and manifest.jsonl into folder; returns the manifest path."""
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    write_dicom(
        p("cxr_p1_current.dcm"), synthetic_cxr(seed=1, nodule=(300, 420, 28)), patient=1, study=2, window=(1800, 3000)
    )
    write_dicom(p("cxr_p1_prior.dcm"), synthetic_cxr(seed=2), patient=1, study=1, window=(1800, 3000))
    inverted = (4095 - synthetic_cxr(seed=3)).astype(np.uint16)
    write_dicom(
        p("cxr_p2_mono1.dcm"), inverted, modality="CR", photometric="MONOCHROME1", patient=2, window=(2295, 3000)
    )
    Image.fromarray(synthetic_fundus(seed=4)).save(p("fundus_p3.png"))
    save_jpeg_with_orientation(p("fundus_p4_exif6.jpg"), synthetic_fundus(seed=5), 6)
    Image.fromarray(synthetic_skin(seed=6), "RGBA").save(p("skin_p5.png"))
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_truncated.dcm"):
        _pydicom_file(name, p(name))
    cr = get_testdata_file("dicomdirtests/77654033/CR1/6154")
    if cr:
        shutil.copyfile(cr, p("cr_mono1_jpegll.dcm"))
    rows = [
        {
            "id": "cxr-1",
            "image": p("cxr_p1_current.dcm"),
            "patient_id": "p1",
            "text": "Findings: A 2.5 cm rounded opacity in the right upper lobe. No pleural effusion. "
            "Heart size normal.\nImpression: Right upper lobe nodule; CT recommended.",
        },
        {
            "id": "cxr-1-long",
            "image": p("cxr_p1_current.dcm"),
            "prior": p("cxr_p1_prior.dcm"),
            "patient_id": "p1",
            "prompt": "Compare the current chest X-ray with the prior.",
            "text": "New rounded opacity in the right upper lobe since the prior study.",
        },
        {
            "id": "cxr-1-loc",
            "image": p("cxr_p1_current.dcm"),
            "patient_id": "p1",
            "prompt": "Locate the nodule.",
            "boxes": [[272, 392, 328, 448]],
            "box_labels": ["nodule"],
        },
        {
            "id": "cxr-2",
            "image": p("cxr_p2_mono1.dcm"),
            "patient_id": "p2",
            "text": "Clear lungs. No focal consolidation, effusion or pneumothorax.",
        },
        {
            "id": "fundus-3",
            "image": p("fundus_p3.png"),
            "patient_id": "p3",
            "modality": "fundus",
            "prompt": "Grade diabetic retinopathy.",
            "label": "no referable diabetic retinopathy",
        },
        {
            "id": "fundus-4",
            "image": p("fundus_p4_exif6.jpg"),
            "patient_id": "p4",
            "modality": "fundus",
            "text": "Healthy optic disc and macula; no haemorrhages or exudates.",
        },
        {
            "id": "skin-5",
            "image": p("skin_p5.png"),
            "patient_id": "p5",
            "modality": "derm",
            "prompt": "Describe the lesion.",
            "text": "Well-circumscribed uniformly brown macule, likely a benign naevus.",
        },
        {
            "id": "ct-6",
            "image": p("CT_small.dcm"),
            "text": "Single axial CT slice: soft tissue and bone windows unremarkable.",
        },
        {"id": "mr-7", "image": p("MR_small.dcm"), "text": "Single MR slice without focal abnormality."},
        {"id": "mr-8-j2k", "image": p("MR_small_jp2klossless.dcm"), "text": "Same MR slice, JPEG 2000 lossless."},
        {"id": "cr-9", "image": p("cr_mono1_jpegll.dcm"), "text": "Small MONOCHROME1 computed radiograph."},
        {"id": "bad-truncated", "image": p("MR_truncated.dcm"), "text": "This file is truncated on purpose."},
        {"id": "bad-missing", "image": p("does_not_exist.dcm"), "text": "This file does not exist."},
    ]
    manifest = p("manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return manifest


PHANTOM_HU = (-1000, -100, 0, 40, 1000)  # air, fat, water, soft tissue, bone


def ct_phantom_slice(index: int, rows: int = 40, cols: int = 50) -> np.ndarray:
    """HU (int16) slice: five vertical bands of PHANTOM_HU; pixel [0, 0] encodes the slice index (-1000 + 10·i)."""
    hu = np.zeros((rows, cols), np.int16)
    for band, value in enumerate(PHANTOM_HU):
        hu[:, band * cols // 5 : (band + 1) * cols // 5] = value
    hu[0, 0] = -1000 + 10 * index
    return hu


def write_series(
    folder: str,
    n: int,
    *,
    modality: str = "CT",
    spacing: float = 2.5,
    orientation: tuple = (1, 0, 0, 0, 1, 0),
    origin: tuple = (-100.0, -100.0, 0.0),
    shuffle_seed: int | None = 0,
    skip: tuple = (),
    duplicate: tuple = (),
    series: int = 1,
    patient: int = 1,
    values=None,
    description: str = "AXIAL",
    extra: dict | None = None,
) -> list[str]:
    """Write an n-slice series; slice k (anatomical order, superior first for axial) at origin - k·spacing·normal.

    Files are named in a shuffled order; `skip` leaves slices out (gaps), `duplicate` writes a copy.
    CT pixels are HU + 1024 stored unsigned with intercept -1024; `values(k)` overrides the slice content.
    """
    os.makedirs(folder, exist_ok=True)
    ori = np.array(orientation, float)
    normal = np.cross(ori[:3], ori[3:])
    axis = int(np.argmax(np.abs(normal)))
    # superior-first for axial (−z), right→left for sagittal (+x), anterior→posterior for coronal (+y)
    step = normal * np.sign(normal[axis]) * (-1.0 if axis == 2 else 1.0) * spacing
    order = list(range(n))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    uid = generate_uid(entropy_srcs=["vol-series", str(series), str(patient), modality])
    paths = []
    for name_index, k in enumerate(order):
        if k in skip:
            continue
        content = values(k) if values else ct_phantom_slice(k)
        pos = np.array(origin) + k * step
        stored = (content.astype(np.int32) + 1024).astype(np.uint16) if modality == "CT" else content.astype(np.uint16)
        fields = {
            "SeriesInstanceUID": uid,
            "SeriesNumber": series,
            "InstanceNumber": k + 1,
            "ImagePositionPatient": [float(v) for v in pos],
            "ImageOrientationPatient": list(map(float, ori)),
            "SliceThickness": spacing,
            "PixelSpacing": [0.7, 0.7],
            "SeriesDescription": description,
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            **(extra or {}),
        }
        for copy in range(2 if k in duplicate else 1):
            path = os.path.join(folder, f"s{series}_{name_index:04d}{'_dup' if copy else ''}.dcm")
            write_dicom(
                path,
                stored,
                modality=modality,
                patient=patient,
                study=series,
                intercept=-1024.0 if modality == "CT" else 0.0,
                extra=fields,
            )
            paths.append(path)
    return paths


def ct_body_slice(k: int, n: int, size: int = 128) -> np.ndarray:
    """A torso-like HU slice: air outside, fat rim, soft tissue, a bony spine, lungs, a lesion mid-volume."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    hu = np.full((size, size), -1000, np.int16)
    r = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.35 * size)) ** 2
    hu[r < 1.0] = -100
    hu[r < 0.8] = 40
    for side in (-1, 1):
        lung = ((x - c - side * 0.2 * size) / (0.13 * size)) ** 2 + ((y - c + 0.03 * size) / (0.18 * size)) ** 2 < 1
        hu[lung] = -850
    hu[(x - c) ** 2 + (y - 0.78 * size) ** 2 < (0.07 * size) ** 2] = 1000
    if abs(k - n // 2) <= 2:
        hu[(x - c - 0.2 * size) ** 2 + (y - c) ** 2 < (0.05 * size) ** 2] = 80
    return hu


def make_volume_samples(folder: str) -> str:
    """Write a CT and an MR series (shuffled file order) and a NIfTI CT, plus volumes.jsonl; returns its path."""
    import SimpleITK as sitk

    os.makedirs(folder, exist_ok=True)
    n = 60
    write_series(
        os.path.join(folder, "ct_p6"),
        n,
        series=1,
        patient=6,
        values=lambda k: ct_body_slice(k, n),
        description="AX CHEST 2.5mm",
    )
    y, x = np.mgrid[0:96, 0:96]

    def head(k: int) -> np.ndarray:
        return (np.clip(1 - ((x - 48) / 40.0) ** 2 - ((y - 48) / 44.0) ** 2, 0, 1) * (800 + 30 * k)).astype(np.int16)

    write_series(
        os.path.join(folder, "mr_p7"),
        24,
        series=2,
        patient=7,
        modality="MR",
        values=head,
        description="AX T2",
        spacing=5.0,
    )
    vol = np.stack([ct_body_slice(k, 30, 96) for k in range(30)])
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, os.path.join(folder, "ct_p8.nii.gz"))
    rows = [
        {
            "id": "ct-6",
            "image": os.path.join(folder, "ct_p6"),
            "patient_id": "p6",
            "prompt": "Write the findings of this chest CT.",
            "text": "Findings: 2 cm soft-tissue nodule in the right lung on series 1, image 31. No effusion.",
        },
        {
            "id": "mr-7",
            "image": os.path.join(folder, "mr_p7"),
            "patient_id": "p7",
            "text": "Brain MR: no focal signal abnormality.",
        },
        {
            "id": "nii-8",
            "image": os.path.join(folder, "ct_p8.nii.gz"),
            "modality": "CT",
            "patient_id": "p8",
            "text": "Chest CT (NIfTI): right lung nodule mid-volume.",
        },
    ]
    manifest = os.path.join(folder, "volumes.jsonl")
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def synthetic_slide_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An H&E-like level-0 RGB image: white glass, pink tissue islands with purple nuclei, a blue pen stroke,
    a black scanner border on the right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 243, np.uint8)
    for cx, cy, rx, ry in ((0.3, 0.45, 0.18, 0.3), (0.65, 0.55, 0.14, 0.22)):
        island = ((x - cx * width) / (rx * width)) ** 2 + ((y - cy * height) / (ry * height)) ** 2 < 1
        img[island] = (222, 150, 190)
        nuclei = island & (rng.random((height, width)) < 0.02)
        img[nuclei] = (110, 60, 150)
    img[int(0.1 * height) : int(0.1 * height) + max(2, height // 60), int(0.5 * width) : int(0.85 * width)] = (
        30,
        60,
        200,
    )
    img[:, int(0.95 * width) :] = 0
    return img


def write_svs(path: str, rgb: np.ndarray, mpp: float | None = 0.25, levels: int = 3, tile: int = 256) -> str:
    """An Aperio-style tiled JPEG TIFF pyramid (each level 4x smaller, one IFD per level) that OpenSlide
    reads as `aperio` with openslide.mpp-x = mpp; mpp=None writes a generic tiled TIFF with no resolution."""
    import tifffile
    from PIL import Image

    description = f"Aperio Image Library v12.0.0 medprep synthetic|AppMag = 40|MPP = {mpp}" if mpp else None
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        level = rgb
        for i in range(levels):
            tif.write(
                level,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                metadata=None,
                description=description if i == 0 else None,
            )
            h, w = level.shape[:2]
            if min(h, w) // 4 < tile // 4:
                break
            level = np.asarray(Image.fromarray(level).resize((w // 4, h // 4), Image.Resampling.BILINEAR))
    return path


def _encoded_tiles(tiles: list[np.ndarray]) -> list[bytes]:
    """JPEG tile bytes exactly as tifffile writes them into a tiled RGB TIFF (one tile per tiny file)."""
    import tifffile

    out = []
    for t in tiles:
        buf = io.BytesIO()
        tifffile.imwrite(buf, t, tile=t.shape[:2], compression="jpeg", photometric="rgb", metadata=None)
        buf.seek(0)
        with tifffile.TiffFile(buf) as tif:
            page = tif.pages[0]
            fh = tif.filehandle
            fh.seek(page.dataoffsets[0])
            out.append(fh.read(page.databytecounts[0]))
    return out


def write_large_svs(path: str, width: int, height: int, mpp: float = 0.25, tile: int = 256, seed: int = 0) -> str:
    """A huge Aperio-style pyramid (e.g. 100,000 x 80,000) written from a few pre-encoded tiles, in about a second
    and ~300 MB: glass everywhere, tissue tiles inside an ellipse (~12 % of the area). Levels 4x apart."""
    import tifffile

    rng = np.random.default_rng(seed)
    glass = np.full((tile, tile, 3), 243, np.uint8)
    variants = []
    for _ in range(4):
        t = np.empty((tile, tile, 3), np.uint8)
        t[:] = (222, 150, 190)
        nuclei = np.kron(rng.random((tile // 8, tile // 8)) < 0.15, np.ones((8, 8), bool))  # 8-px nuclei
        t[nuclei] = (110, 60, 150)
        variants.append(t)
    encoded_glass, *encoded_tissue = _encoded_tiles([glass] + variants)
    description = f"Aperio Image Library v12.0.0 medprep synthetic|AppMag = 40|MPP = {mpp}"

    def tiles(w: int, h: int):
        ty, tx = -(-h // tile), -(-w // tile)
        for j in range(ty):
            for i in range(tx):
                u, v = (i + 0.5) / tx - 0.5, (j + 0.5) / ty - 0.5
                inside = (u / 0.22) ** 2 + (v / 0.18) ** 2 < 1
                yield encoded_tissue[(i * 7 + j * 3) % 4] if inside else encoded_glass

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        w, h, first = width, height, True
        while True:
            tif.write(
                tiles(w, h),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="rgb",
                metadata=None,
                description=description if first else None,
            )
            first = False
            if min(w, h) // 4 < tile:
                break
            w, h = w // 4, h // 4
    return path


def make_slide_samples(folder: str) -> str:
    """Write two synthetic SVS slides (one with no resolution, given by the manifest) and slides.jsonl."""
    os.makedirs(folder, exist_ok=True)
    a = write_svs(os.path.join(folder, "slide_p10.svs"), synthetic_slide_rgb(12288, 9216, seed=10), mpp=0.25)
    b = write_svs(os.path.join(folder, "slide_p11_nompp.tif"), synthetic_slide_rgb(6144, 4608, seed=11), mpp=None)
    rows = [
        {
            "id": "wsi-10",
            "image": a,
            "patient_id": "p10",
            "prompt": "Describe the histopathology of these patches.",
            "text": "Invasive ductal carcinoma, grade 2; no lymphovascular invasion seen.",
        },
        {"id": "wsi-11", "image": b, "patient_id": "p11", "mpp": 0.5, "text": "Benign breast tissue."},
    ]
    manifest = os.path.join(folder, "slides.jsonl")
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
