"""Base DoFn for manifest rows: the config, the tokenizer opened once per worker, row-based error refs."""

from __future__ import annotations

from medprep.pipelines.config import Config
from medprep.pipelines.graphs.dead_letter import ItemDoFn
from medprep.pipelines.io.manifest import check_text_sizes
from medprep.pipelines.io.tokenizer import load_tokenizer


class ManifestRowDoFn(ItemDoFn):
    """Subclasses implement `outputs(row)`; `self.tokenizer` is ready in `outputs`."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.timeout = config.item_timeout
        self.threads = config.item_threads if self.concurrent_items else 1
        self.progress_file = config.progress_file

    def setup(self):
        super().setup()
        self.tokenizer = load_tokenizer(self.config.tokenizer)

    def ref_of(self, row) -> tuple[str, int]:
        return row["images"][0], row["row"]

    def _timed_outputs(self, row) -> tuple[list, dict]:
        check_text_sizes(row, self.config.max_text_bytes)  # raised here: an error line, like any item failure
        return super()._timed_outputs(row)
