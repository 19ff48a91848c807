"""load_options: a finished run's processing options, rebuilt from its summary.json for serving."""

from __future__ import annotations

import json

from medprep.transforms.inference import InferenceOptions


def load_options(output: str) -> InferenceOptions:
    """OUT (local or gs://) or its summary.json -> the run's image, volume and slide options and system prompt,
    so prepare_image / prepare_series / prepare_slide(options=…) give the run's pixels and messages."""
    from medprep.pipelines.config import Config
    from medprep.pipelines.io.sources.files import read_bytes

    path = output if output.endswith(".json") else output.rstrip("/") + "/summary.json"
    saved = json.loads(read_bytes(path).decode("utf-8"))["config"]
    keys = {f for f in Config.__dataclass_fields__}
    values = {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
        for k, v in saved.items()
        if k in keys and k != "tokenizer_info"
    }
    config = Config(**values)
    return InferenceOptions(
        config.image_options(), config.volume_options(), config.slide_options(), config.system_prompt
    )
