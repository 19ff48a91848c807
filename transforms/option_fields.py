"""Options declared once: a dataclass field carries its default, its --help line and its parser.

The option dataclasses (transforms.image.ImageOptions, transforms.volume.VolumeOptions, …, and the run
options in medprep.pipelines.run_options) declare their fields with `option(...)`; the command line,
the run configuration, config_hash and summary.json are all derived from those fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Parser = Callable[[str], Any]


def option(
    default: Any,
    help: str,
    parse: Parser | None = None,
    choices: Sequence[str] | None = None,
    name: str = "",
    flag: bool = False,
    cli: str = "",
) -> Any:
    """A dataclass field that is also a command-line option `--{cli or name or field name}`.

    parse turns the text into the value (raising ValueError with a message); choices restricts it;
    flag=True makes a switch without a value (store_true); name renames the run-config key (and the
    option); cli renames the option only (two subcommands may share an option name with different keys)."""
    meta = {
        "help": help,
        "parse": parse,
        "choices": tuple(choices) if choices else None,
        "name": name,
        "flag": flag,
        "cli": cli,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"option": meta})


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One option as the command line and the run config see it."""

    name: str  # the run-config key
    cli: str  # the option's name on the command line (--cli)
    attr: str  # the dataclass attribute it sets
    default: Any
    help: str
    parse: Parser | None
    choices: tuple[str, ...] | None
    flag: bool


def option_fields(cls: type) -> Iterator[OptionField]:
    """The options an option dataclass declares, in declaration order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is not None:
            name = meta["name"] or f.name
            yield OptionField(
                name, meta["cli"] or name, f.name, f.default, meta["help"], meta["parse"], meta["choices"], meta["flag"]
            )


def from_values(cls: type, values: dict[str, Any], **fixed: Any) -> Any:
    """An instance of an option dataclass from run-config values keyed by option name (missing: default)."""
    kwargs = {o.attr: values[o.name] for o in option_fields(cls) if o.name in values}
    return cls(**kwargs, **fixed)


def to_values(instance: Any) -> dict[str, Any]:
    """{option name: value} of an option dataclass instance."""
    return {o.name: getattr(instance, o.attr) for o in option_fields(type(instance))}


# ---- parsers (text -> value, ValueError naming what was expected) ---------------------------------


def int_in(low: int, high: int | None = None) -> Parser:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be in [{low}, {high if high is not None else '∞'}], got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")
    return value


def share(text: str) -> float:
    """A number in [0, 1] (a share of a whole, 1 included)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """A size in bytes > 0: an integer, or with a binary suffix K, M, G, T (e.g. 500M, 2G)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _BYTE_UNITS else ""
    try:
        value = int(float(raw[: len(raw) - len(unit)]) * _BYTE_UNITS[unit])
    except ValueError:
        raise ValueError(f"expected a size such as 500M or 2G, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = _number(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def names_from(allowed: Sequence[str], hint: str) -> Parser:
    """A comma-separated, de-duplicated, non-empty list of names from `allowed`, as a tuple."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        if not names or any(n not in allowed for n in names):
            raise ValueError(f"choose {hint}; got {text!r}")
        return names

    return parse


def number_pair(low: float, high: float) -> Parser:
    """'a,b' with low <= a < b <= high."""

    def parse(text: str) -> tuple[float, float]:
        try:
            a, b = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"expected 'low,high', got {text!r}") from None
        if not low <= a < b <= high:
            raise ValueError(f"need {low:g} <= low < high <= {high:g}, got {text!r}")
        return a, b

    return parse
