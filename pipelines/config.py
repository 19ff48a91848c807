"""The run configuration shared by every pipeline: what the workers need, picklable, hashable."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

from medprep.transforms.dicom_render import RenderOptions
from medprep.transforms.errors import strip_credentials
from medprep.transforms.encode import DEFAULT_JPEG_QUALITY, DEFAULT_PNG_LEVEL
from medprep.transforms.image import DEFAULT_IMAGE_SIZE, ImageOptions
from medprep.transforms.slice_selection import DEFAULT_MAX_SLICES
from medprep.transforms.slide import SlideOptions
from medprep.transforms.volume import VolumeOptions
from medprep.transforms.windowing import CT_PRESETS, Window

PIPELINE_VERSION = "0.1.0"
_SLIDE = SlideOptions()


@dataclass(frozen=True)
class Config:
    """Options of one run (paths, processing, text, splits, outputs). The salt is never serialized."""

    input: str
    output_dir: str
    tokenizer: str = ""
    tokenizer_sha256: str = ""  # content hash: the same model from any path gives the same records
    tokenizer_info: str = ""    # JSON: kind, vocabulary size, special ids, chat template hash (summary.json)
    system_prompt: str = ""     # a system message before the user turn (Gemma 3 folds it into the user turn)
    text_ids_only: bool = False  # a tokenizer without the chat tokens gives prompt_ids/text_ids only
    keep_source: bool = False    # `source` holds references relative to the manifest instead of their hashes
    image_size: int = DEFAULT_IMAGE_SIZE
    image_format: str = "png"
    png_level: int = DEFAULT_PNG_LEVEL
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    ct_preset: str = "medgemma-1.5"
    ct_windows: tuple = ()  # custom ((lo, hi), (lo, hi), (lo, hi)) overriding the preset
    max_pixels: int = 200_000_000
    formats: tuple = ("arrayrecord", "parquet")
    num_shards: int = 0
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    max_text_tokens: int = 1024
    overwrite: bool = False
    preview_count: int = 16
    # volumes
    max_slices: int = DEFAULT_MAX_SLICES
    slice_selection: str = "uniform"
    mr_normalization: str = "minmax"
    mr_percentiles: tuple = (0.5, 99.5)
    min_slices: int = 2
    granularity: tuple = ("series",)
    series_filter: str = ""
    salt: str = field(default="", repr=False)
    salt_is_default: bool = False
    scrub_text: bool = False
    allow_burned_in: bool = False
    allow_extra_columns: bool = False  # manifest columns medprep does not know are kept (row['extra'])
    extra_columns: tuple = ()  # those columns (sorted), found at start-up; listed in summary.json
    item_timeout: float = 600.0
    # slides (defaults: medprep.transforms.slide.SlideOptions, the MedGemma reference)
    target_mpp: float = _SLIDE.target_mpp
    patch_size: int = _SLIDE.patch_size
    stride: int = _SLIDE.stride
    tissue: str = _SLIDE.tissue
    min_tissue: float = _SLIDE.min_tissue
    max_patches: int = _SLIDE.max_patches
    patches_per_example: int = _SLIDE.max_patches
    seed: int = _SLIDE.seed
    assume_mpp: float = 0.0
    dicomweb_url: str = ""   # discovery: a DICOMweb service to search instead of a manifest
    query: str = ""          # QIDO filters for discovery
    reports: str = ""        # report texts joined by StudyInstanceUID / AccessionNumber
    staging_dir: str = ""   # where workers write; committed into output_dir when the run succeeds
    progress_file: str = ""  # local runs: workers mark finished inputs here for the launcher's progress bar
    expected_inputs: int = 0  # manifest rows, known at start-up (0: discovery, not known)
    commit_in_pipeline: bool = False  # the job commits staging into output_dir itself (launchers that exit)

    @property
    def write_dir(self) -> str:
        """The folder the pipeline writes into (the staging folder, else output_dir)."""
        return self.staging_dir or self.output_dir

    def windows(self) -> tuple[Window, Window, Window]:
        """The three CT windows (R, G, B) in HU."""
        if self.ct_windows:
            return tuple(Window(lo, hi) for lo, hi in self.ct_windows)  # type: ignore[return-value]
        return CT_PRESETS[self.ct_preset]

    def image_options(self) -> ImageOptions:
        """Options for medprep.transforms.image."""
        render = RenderOptions(ct_windows=self.windows(), max_pixels=self.max_pixels)
        return ImageOptions(self.image_size, self.image_format, self.png_level, self.jpeg_quality, render)

    def volume_options(self) -> VolumeOptions:
        """Options for medprep.transforms.volume."""
        return VolumeOptions(self.image_options(), self.max_slices, self.slice_selection, self.mr_normalization,
                             tuple(self.mr_percentiles), self.min_slices)

    def slide_options(self, mpp_override: float | None = None) -> SlideOptions:
        """Options for medprep.transforms.slide (a manifest row's mpp overrides the slide's own resolution)."""
        return SlideOptions(self.image_options(), self.target_mpp, self.patch_size, self.stride, self.tissue,
                            self.min_tissue, self.max_patches, self.seed, assume_mpp=self.assume_mpp or None,
                            override_mpp=mpp_override)

    def public(self) -> dict:
        """The configuration as written to summary.json (no salt, no paths' secrets)."""
        d = asdict(self)
        d.pop("salt")
        d.pop("staging_dir")
        d.pop("progress_file")
        d["tokenizer_info"] = json.loads(self.tokenizer_info) if self.tokenizer_info else None
        for key in ("input", "output_dir", "tokenizer", "dicomweb_url", "reports"):
            d[key] = strip_credentials(d[key])
        d["formats"] = list(self.formats)
        d["granularity"] = list(self.granularity)
        d["mr_percentiles"] = list(self.mr_percentiles)
        d["ct_windows"] = [[w.low, w.high] for w in self.windows()]
        return d

    @functools.cached_property
    def config_hash(self) -> str:
        """SHA-256 over the options that change record content (not input/output paths)."""
        d = self.public()
        for key in ("input", "output_dir", "tokenizer", "overwrite", "preview_count", "formats", "num_shards",
                    "item_timeout", "dicomweb_url", "query", "reports", "expected_inputs",
                    "commit_in_pipeline"):
            d.pop(key, None)
        d["pipeline_version"] = PIPELINE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()
