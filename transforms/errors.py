"""The one exception type per-item code raises: it names the pipeline stage that failed."""

STAGES = ("manifest", "read", "decode", "transform", "encode", "text", "record", "privacy", "timeout")


class ItemError(Exception):
    """A failure of one input item; `stage` is one of STAGES, the message is user-facing."""

    def __init__(self, stage: str, message: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        super().__init__(message)
        self.stage = stage
        self.message = message

    def __reduce__(self):  # keep stage across pickling (multi-process runners)
        return (ItemError, (self.stage, self.message))


class stage:
    """Context manager: any non-ItemError exception inside becomes ItemError(name, …)."""

    def __init__(self, name: str):
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ItemError) or not isinstance(exc, Exception):
            return False
        raise ItemError(self.name, f"{type(exc).__name__}: {exc}") from exc
