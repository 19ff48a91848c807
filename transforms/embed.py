"""Image embeddings and visual tokens from a Hugging Face vision encoder folder (no Beam).

Two kinds of folder are read:
- SigLIP, as MedSigLIP ships it: a `siglip` (image + text) or `siglip_vision_model` checkpoint. The
  pooled embedding is the vision model's `pooler_output` (its attention-pooling head; the mean of the
  tokens when the config has no head); the token grid is `last_hidden_state` (one token per patch).
- Gemma 3 / MedGemma (`gemma3`): only the vision tower and the multimodal projector are read from
  the checkpoint (the language model's weights are never loaded). The token grid is the projector's
  output — the `mm_tokens_per_image` (256) soft tokens the language model consumes, exactly
  `Gemma3Model.get_image_features(...).pooler_output` — and the pooled embedding is their mean.

Images become model input through the folder's own image processor (`preprocessor_config.json`,
loaded by `AutoImageProcessor` with transformers' PIL backend): its size, resampling filter, rescale
factor and mean/std, not a copy of them. Weights are read from `*.safetensors` and must cover every
parameter of the encoder (a partial checkpoint is refused rather than filled with random values).

    enc = load_encoder("medsiglip-448/")                 # CPU, or the GPU when there is one
    out = embed_images([pil_or_png_bytes, ...], enc, pooling="both", batch_size=8)
    out.pooled            # float32 (N, D)
    out.tokens            # float32 (N, rows, cols, D)
    enc.info.model_hash   # SHA-256 of weights + config.json + preprocessor_config.json

Results are deterministic on CPU for a given batch composition; a batch of other images can change
the last bits (~1e-6: matrix kernels depend on the batch size), which is why the pipeline forms its
batches from a fixed order of images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float32]

POOLINGS = ("pooled", "tokens", "both")
DTYPES = ("float32", "float16", "bfloat16")
KINDS = {"siglip": "siglip", "siglip_vision_model": "siglip", "gemma3": "gemma3"}
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Checkpoint names of one encoder parameter, by where the parameter sits in our module: transformers 5
# writes SigLIP vision models without the `vision_model.` level that full SigLIP and older checkpoints
# have, and Gemma 3 checkpoints exist with and without `model.` and the tower's `vision_model.` level.
_PREFIXES: dict[str, dict[str, tuple[str, ...]]] = {
    "siglip": {"": ("", "vision_model.")},
    "gemma3": {
        "vision_tower.": (
            "vision_tower.",
            "vision_tower.vision_model.",
            "model.vision_tower.",
            "model.vision_tower.vision_model.",
        ),
        "multi_modal_projector.": ("multi_modal_projector.", "model.multi_modal_projector."),
    },
}
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


class ModelFolderError(ValueError):
    """A model folder that cannot be used; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class EncoderInfo:
    """What an output records about the encoder (picklable, JSON-able)."""

    kind: str  # siglip | gemma3
    model_type: str  # config.json's model_type
    model_hash: str  # SHA-256 over weights_sha256, config.json and preprocessor_config.json
    weights_sha256: str  # SHA-256 over the encoder's tensors as stored (name, dtype, shape, bytes)
    image_size: tuple[int, int]  # model input (height, width)
    embedding_dim: int  # length of the pooled embedding
    token_grid: tuple[int, int, int]  # (rows, cols, dim) of the token grid
    pooled_from: str  # "head" (SigLIP's attention pooling) or "token_mean"
    normalization: str  # JSON: the processor's resize / rescale / normalize settings
    dtype: str
    device: str
    parameters: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"], d["token_grid"] = list(self.image_size), list(self.token_grid)
        d["normalization"] = json.loads(self.normalization)
        return d


@dataclass
class Embeddings:
    """embed_images' result: rows follow the input images."""

    pooled: Floats | None  # float32 (N, D)
    tokens: Floats | None  # float32 (N, rows, cols, D)
    info: EncoderInfo


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_json(folder: str, name: str) -> dict[str, Any]:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ModelFolderError(f"{folder}: no {name}")
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return value


def _canonical(d: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS}, sort_keys=True)


def _weight_files(folder: str) -> list[str]:
    """The safetensors files of a folder: those of the index when there is one, else every *.safetensors."""
    index = os.path.join(folder, WEIGHTS_INDEX)
    if os.path.isfile(index):
        weight_map = _read_json(folder, WEIGHTS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFolderError(f"{index}: no weight_map")
        names = sorted(set(weight_map.values()))
    else:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not names:
        others = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")))
        hint = f" (found {', '.join(others)}: convert them to safetensors)" if others else ""
        raise ModelFolderError(f"{folder}: no *.safetensors weights{hint}")
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ModelFolderError(f"{folder}: weight file {missing[0]} is missing")
    return [os.path.join(folder, n) for n in names]


def _checkpoint_keys(files: list[str]) -> dict[str, str]:
    """{tensor name: file} over the safetensors files (headers only)."""
    from safetensors import safe_open

    where: dict[str, str] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as fh:
                for key in fh.keys():
                    where[key] = path
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ModelFolderError(f"{path}: not a readable safetensors file ({exc})") from None
    return where


def _build_module(kind: str, config: Any) -> Any:
    """The encoder module, parameters uninitialised (they are all loaded next)."""
    import transformers
    from transformers.initialization import no_init_weights

    auto_model: Any = transformers.AutoModel  # transformers' loaders are untyped
    with no_init_weights():
        if kind == "siglip":
            vision = config.vision_config if config.model_type == "siglip" else config
            return auto_model.from_config(vision)
        return _gemma3_vision_class()(config)


def _gemma3_vision_class() -> Any:
    import torch
    import transformers
    from transformers.models.gemma3 import modeling_gemma3

    auto_model: Any = transformers.AutoModel
    projector: Any = modeling_gemma3.Gemma3MultiModalProjector

    class Gemma3Vision(torch.nn.Module):
        """Gemma 3's vision tower and multimodal projector, as Gemma3Model holds them."""

        def __init__(self, config: Any) -> None:
            super().__init__()
            self.vision_tower = auto_model.from_config(config.vision_config)
            self.multi_modal_projector = projector(config)

        def forward(self, pixel_values: Any) -> Any:
            hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state
            return self.multi_modal_projector(hidden)

    return Gemma3Vision


def _checkpoint_name(kind: str, key: str, available: dict[str, str]) -> str | None:
    for inner, prefixes in _PREFIXES[kind].items():
        if key.startswith(inner):
            rest = key[len(inner) :]
            for prefix in prefixes:
                if prefix + rest in available:
                    return prefix + rest
    return None


def _load_weights(module: Any, kind: str, folder: str) -> str:
    """Fill every parameter and persistent buffer of `module` from the folder's safetensors; returns
    the SHA-256 over the tensors as stored (in the module's sorted key order, so independent of file
    layout, sharding and checkpoint naming)."""
    import torch
    from safetensors import safe_open

    where = _checkpoint_keys(_weight_files(folder))
    expected = module.state_dict()
    names = {}
    for key in expected:
        name = _checkpoint_name(kind, key, where)
        if name is None:
            missing = [k for k in expected if _checkpoint_name(kind, k, where) is None]
            raise ModelFolderError(
                f"{folder}: the checkpoint lacks {len(missing)} of the encoder's "
                f"{len(expected)} tensors (first: {missing[0]})"
            )
        names[key] = name
    digest = hashlib.sha256()
    loaded: dict[str, Any] = {}
    handles: dict[str, Any] = {}
    try:
        for key in sorted(expected):
            path = where[names[key]]
            if path not in handles:
                handles[path] = safe_open(path, framework="pt")
            try:
                tensor = handles[path].get_tensor(names[key])
            except Exception as exc:
                raise ModelFolderError(f"{path}: cannot read tensor {names[key]} ({exc})") from None
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ModelFolderError(
                    f"{path}: tensor {names[key]} has shape {list(tensor.shape)}, the config "
                    f"implies {list(expected[key].shape)}"
                )
            digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            loaded[key] = tensor
    finally:
        handles.clear()
    module.load_state_dict(loaded, strict=True)
    return digest.hexdigest()


def _normalization(processor: Any) -> dict[str, Any]:
    """The processor settings that turn an image into model input."""
    from PIL import Image

    resample = getattr(processor, "resample", None)
    try:
        resample_name = Image.Resampling(int(resample)).name.lower() if resample is not None else None
    except (TypeError, ValueError):
        resample_name = str(resample)
    size = getattr(processor, "size", None)
    size = dict(size) if size is not None else None

    def listed(v: Any) -> Any:
        return [float(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {
        "processor": type(processor).__name__,
        "do_convert_rgb": getattr(processor, "do_convert_rgb", None),
        "do_resize": getattr(processor, "do_resize", None),
        "size": {k: v for k, v in (size or {}).items() if v is not None},
        "resample": resample_name,
        "do_rescale": getattr(processor, "do_rescale", None),
        "rescale_factor": getattr(processor, "rescale_factor", None),
        "do_normalize": getattr(processor, "do_normalize", None),
        "image_mean": listed(getattr(processor, "image_mean", None)),
        "image_std": listed(getattr(processor, "image_std", None)),
    }


def _value_table(processor: Any) -> Floats | None:
    """(3, 256) float32: what the processor's own rescale and normalize make of each uint8 value per channel,
    for processors whose steps are resize -> rescale -> normalize (PIL backend, no crop, pad or pan-and-scan);
    None for any other processor."""
    from transformers.image_utils import ChannelDimension

    if (
        getattr(processor, "backend", None) != "pil"
        or getattr(processor, "do_center_crop", None)
        or getattr(processor, "do_pad", None)
        or getattr(processor, "do_pan_and_scan", None)
        or getattr(processor, "resample", None) is None
    ):
        return None
    values: Any = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
    first = ChannelDimension.FIRST
    if getattr(processor, "do_rescale", False):
        values = processor.rescale(values, processor.rescale_factor, input_data_format=first)
    if getattr(processor, "do_normalize", False):
        values = processor.normalize(values, processor.image_mean, processor.image_std, input_data_format=first)
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32)[:, 0, :])


def _load_processor(folder: str, image_size: int) -> Any:
    import transformers

    auto_processor: Any = transformers.AutoImageProcessor
    _read_json(folder, PREPROCESSOR_FILE)
    try:
        processor = auto_processor.from_pretrained(folder, backend="pil")
    except Exception as exc:
        raise ModelFolderError(
            f"{os.path.join(folder, PREPROCESSOR_FILE)}: cannot build the image processor ({type(exc).__name__}: {exc})"
        ) from None
    size = getattr(processor, "size", None) or {}
    height, width = size.get("height"), size.get("width")
    if not getattr(processor, "do_resize", False) or (height, width) != (image_size, image_size):
        raise ModelFolderError(
            f"{os.path.join(folder, PREPROCESSOR_FILE)}: the processor must resize to the "
            f"model's {image_size}x{image_size} input (size {dict(size)}, do_resize "
            f"{getattr(processor, 'do_resize', None)})"
        )
    if getattr(processor, "do_pan_and_scan", None):
        raise ModelFolderError(
            f"{os.path.join(folder, PREPROCESSOR_FILE)}: do_pan_and_scan would turn one image "
            "into several crops; set it to false for embeddings"
        )
    return processor


class VisionEncoder:
    """A loaded encoder: its module (eval mode, on `device`, in `dtype`), its image processor and info."""

    def __init__(self, module: Any, processor: Any, info: EncoderInfo) -> None:
        self.module, self.processor, self.info = module, processor, info
        self._lut = _value_table(processor)
        if self._lut is not None and not self._table_matches_processor():
            self._lut = None

    def processor_pixel_values(self, image: Any) -> Floats:
        """One image through the folder's image processor itself: float32 (3, H, W)."""
        out = self.processor(images=[image], return_tensors="np")["pixel_values"]
        if out.shape[0] != 1:
            raise ValueError(f"the image processor made {out.shape[0]} inputs of one image")
        return np.ascontiguousarray(out[0], dtype=np.float32)

    def _table_pixel_values(self, image: Any) -> Floats:
        """The processor's steps for an RGB PIL image, its per-value arithmetic read from a table."""
        from PIL import Image

        assert self._lut is not None
        height, width = self.info.image_size
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling(int(self.processor.resample)))
        pixels = np.asarray(image)
        out = np.empty((3, height, width), np.float32)
        for c in range(3):
            np.take(self._lut[c], pixels[:, :, c], out=out[c])
        return out

    def _table_matches_processor(self) -> bool:
        """The table path equals the processor bit for bit on probe images (the model's size and another)."""
        from PIL import Image

        rng = np.random.default_rng(0)
        height, width = self.info.image_size
        for h, w in ((height, width), (61, 97)):
            probe = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if not np.array_equal(self._table_pixel_values(probe), self.processor_pixel_values(probe)):
                return False
        return True

    def pixel_values(self, image: Any) -> Floats:
        """One image (PIL, HxWxC uint8 array, or encoded bytes) as the folder's image processor makes it:
        float32 (3, H, W). RGB PIL images take a faster path that gives the processor's exact values: the
        same PIL resize, then a 256-entry table per channel that the processor's own rescale and normalize
        computed (checked bit for bit against the processor when the encoder is loaded); anything else goes
        through the processor."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(image))
        if self._lut is not None and getattr(image, "mode", None) == "RGB":
            return self._table_pixel_values(image)
        return self.processor_pixel_values(image)

    def forward(self, pixel_values: Floats, pooling: str = "both") -> tuple[Floats | None, Floats | None]:
        """(pooled (B, D) | None, tokens (B, rows, cols, D) | None) as float32 numpy, for pixel_values (B, 3, H, W)."""
        import torch

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        device = self.info.device
        x = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(device=device, dtype=_torch_dtype(self.info.dtype))
        with torch.inference_mode():
            if self.info.kind == "gemma3":
                tokens = self.module(x)
                pooled = tokens.float().mean(dim=1)
            else:
                out = self.module(pixel_values=x)
                tokens = out.last_hidden_state
                pooled = out.pooler_output.float() if out.pooler_output is not None else tokens.float().mean(dim=1)
        rows, cols, dim = self.info.token_grid
        pooled_np = pooled.cpu().numpy().astype(np.float32, copy=False) if pooling != "tokens" else None
        tokens_np = tokens.float().cpu().numpy().reshape(len(x), rows, cols, dim) if pooling != "pooled" else None
        return pooled_np, tokens_np

    def __repr__(self) -> str:
        i = self.info
        return (
            f"VisionEncoder({i.kind}, {i.parameters:,} parameters, input {i.image_size[0]}x{i.image_size[1]}, "
            f"dim {i.embedding_dim}, tokens {i.token_grid}, {i.dtype} on {i.device}, {i.model_hash[:12]})"
        )


def load_encoder(folder: str, dtype: str = "float32", device: str | None = None) -> VisionEncoder:
    """Load a local model folder (config.json, preprocessor_config.json, *.safetensors).

    ModelFolderError (naming the folder) when it is missing, of an unsupported kind, or its config,
    processor or weights are unreadable or do not fit each other."""
    import transformers

    auto_config: Any = transformers.AutoConfig
    if not os.path.isdir(folder):
        raise ModelFolderError(f"{folder}: no such folder")
    torch_dtype = _torch_dtype(dtype)
    raw_config = _read_json(folder, CONFIG_FILE)
    model_type = str(raw_config.get("model_type"))
    kind = KINDS.get(model_type)
    if kind is None:
        raise ModelFolderError(
            f"{folder}: model_type {model_type!r} is not a supported vision encoder ({', '.join(KINDS)})"
        )
    try:
        config = auto_config.from_pretrained(folder)
    except Exception as exc:
        raise ModelFolderError(f"{os.path.join(folder, CONFIG_FILE)}: {type(exc).__name__}: {exc}") from None
    vision = config if model_type == "siglip_vision_model" else config.vision_config
    image_size, patch = int(vision.image_size), int(vision.patch_size)
    processor = _load_processor(folder, image_size)
    module = _build_module(kind, config)
    weights_sha = _load_weights(module, kind, folder)
    device = device or default_device()
    module = module.to(device=device, dtype=torch_dtype).eval()
    if kind == "gemma3":
        side = int(round(config.mm_tokens_per_image**0.5))
        grid = (side, side, int(config.text_config.hidden_size))
        pooled_from, dim = "token_mean", grid[2]
    else:
        side = image_size // patch
        grid = (side, side, int(vision.hidden_size))
        pooled_from = "head" if getattr(vision, "vision_use_head", True) else "token_mean"
        dim = grid[2]
    preprocessor = _read_json(folder, PREPROCESSOR_FILE)
    model_hash = hashlib.sha256(
        json.dumps(
            {"weights": weights_sha, "config": _canonical(raw_config), "preprocessor": _canonical(preprocessor)},
            sort_keys=True,
        ).encode("utf-8")
    ).hexdigest()
    info = EncoderInfo(
        kind=kind,
        model_type=model_type,
        model_hash=model_hash,
        weights_sha256=weights_sha,
        image_size=(image_size, image_size),
        embedding_dim=dim,
        token_grid=grid,
        pooled_from=pooled_from,
        normalization=json.dumps(_normalization(processor), sort_keys=True),
        dtype=dtype,
        device=str(device),
        parameters=sum(p.numel() for p in module.parameters()),
    )
    return VisionEncoder(module, processor, info)


def decode_image(data: bytes) -> Any:
    """Encoded image bytes -> a loaded PIL image (ValueError when they do not decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"image bytes do not decode: {exc}") from None
    return image


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_images(
    images: Sequence[Any],
    model: VisionEncoder | str,
    pooling: str = "pooled",
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | None = None,
) -> Embeddings:
    """Embed images (PIL images, HxWx3 uint8 arrays or encoded bytes such as a record's `images`) in
    batches of `batch_size`, in order. `model` is a loaded VisionEncoder or a model folder (loaded here,
    with `dtype` and `device`). The pipeline batches the images of an input shard in the same way, so
    the same images in the same batches give bit-identical vectors."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoder = load_encoder(model, dtype, device) if isinstance(model, str) else model
    rows, cols, dim = encoder.info.token_grid
    pooled: list[Floats] = [np.zeros((0, encoder.info.embedding_dim), np.float32)]
    tokens: list[Floats] = [np.zeros((0, rows, cols, dim), np.float32)]
    for chunk in _batches(list(images), batch_size):
        p, t = encoder.forward(np.stack([encoder.pixel_values(img) for img in chunk]), pooling)
        pooled += [] if p is None else [p]
        tokens += [] if t is None else [t]
    return Embeddings(
        pooled=np.concatenate(pooled) if pooling != "tokens" else None,
        tokens=np.concatenate(tokens) if pooling != "pooled" else None,
        info=encoder.info,
    )
