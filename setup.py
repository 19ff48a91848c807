"""medprep: imaging data preparation for MedGemma-style vision-language models."""

import os

from setuptools import setup

VERSION = "0.1.0"

# One list, read by the Dockerfile check in tests/pipelines/test_packaging.py as well.
INSTALL_REQUIRES = [
    # Pinned to the Dockerfile base image: Dataflow needs launcher and worker on one SDK version.
    "apache-beam[gcp]==2.77.0",
    "array-record>=0.5,<1",
    "google-cloud-storage>=2.14,<4",
    "imagecodecs>=2024.1",  # the JPEG (libjpeg-turbo), LZW and deflate tiles of SVS / pyramidal TIFF slides
    "isal>=1.6,<2",  # ISA-L deflate for the fast PNG encoder (transforms/png.py)
    "jinja2>=3.1,<4",  # Hugging Face chat templates (a tokenizer folder's chat_template.jinja)
    "numpy>=1.26,<3",
    "openslide-bin>=4,<5",
    "openslide-python>=1.3,<2",
    "pillow>=10.3,<13",
    "protobuf>=4.21,<8",
    "pyarrow>=14,<27",
    # Pixel decoders. Licences chosen deliberately: python-gdcm (BSD) for JPEG
    # baseline/extended/lossless and JPEG-LS, pylibjpeg-openjpeg (MIT) for JPEG 2000.
    # pylibjpeg-libjpeg is GPLv3 and is NOT a dependency (install it yourself if your
    # licence allows; pydicom then uses it automatically).
    "pydicom>=3.0,<4",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-openjpeg>=2.3,<3",
    "python-gdcm>=3.0.24,<4",
    "sentencepiece>=0.2,<0.3",
    "SimpleITK>=2.3,<3",
    "tifffile>=2024.1",  # SVS / pyramidal TIFF slides, read tile by tile (transforms/slide_tiff.py)
    "tokenizers>=0.21,<1",  # Hugging Face tokenizer.json, run by the library transformers itself uses
    # DICOM WSI. wsidicom >= 0.30 needs cachetools >= 7.1.3, which apache-beam[gcp] forbids (< 7);
    # 0.29.0 is the newest release that installs beside Beam without a conflict.
    "wsidicom==0.29.0",
    "dicomweb-client>=0.59,<1",  # DICOM WSI over DICOMweb (wsidicom's web client)
]

DEMO_REQUIRES: list[str] = []  # `medprep demo` writes its sample slides with tifffile, now a runtime dependency

EXTRAS_REQUIRE = {
    "demo": DEMO_REQUIRES,
    # `medprep embed`: vision encoders (SigLIP / MedSigLIP, Gemma 3 vision tower) run with PyTorch + transformers.
    "embed": ["torch", "transformers>=5.20,<6"],
    "test": [
        *DEMO_REQUIRES,
        "datasets>=3,<6",
        "gcp-storage-emulator>=2024.0",  # local GCS for gs:// tests
        "grain>=0.2.10,<0.3",  # Grain loader tests
        "torch==2.13.0",  # PyTorch loader tests (CPU wheel)
        "pydicom-data>=1.0,<2",  # real multi-frame MR, full-size MONOCHROME1 CRs for tests
        "hypothesis>=6.100,<7",
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "ruff>=0.17,<0.18",  # make lint (pyproject.toml); a new minor release may add rules: raise it on purpose
        "mypy>=2.4,<3",  # make lint: types, strict on medprep.transforms, medprep.schemas and the API
        "transformers>=5.20,<6",  # the reference: Gemma3Processor's chat ids, a tiny Gemma 3 trained in tests
    ],
}


def _subpackages(folder: str) -> list[str]:
    """medprep.<folder> and every package below it."""
    return ["medprep." + p for p in _packages_under(folder)]


def _packages_under(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        if "__init__.py" in files:
            out.append(root.replace(os.sep, "."))
    return out


_FOLDERS = [p for f in ("transforms", "schemas", "pipelines") for p in _packages_under(f)]

setup(
    name="medprep",
    version=VERSION,
    description="Beam pipelines that prepare CT/MR, whole-slide and 2D medical images "
    "plus paired text for MedGemma-style training and inference.",
    python_requires=">=3.10,<3.13",
    # One namespace: the top-level folders install as medprep.transforms, medprep.schemas, medprep.pipelines
    # (no generic top-level names in site-packages).
    packages=[
        "medprep",
        "medprep.samples",
        *_subpackages("transforms"),
        *_subpackages("schemas"),
        *_subpackages("pipelines"),
    ],
    package_dir={"medprep": "medprep", **{f"medprep.{p}": p.replace(".", "/") for p in _FOLDERS}},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["medprep=medprep.pipelines.cli.main:console_main"]},
)
