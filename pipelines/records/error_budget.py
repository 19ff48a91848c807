"""The error budget: whether a finished run failed on too many inputs to replace the previous outputs."""

from __future__ import annotations


def over_budget(summary: dict, max_error_fraction: float, max_errors: int = -1) -> str:
    """Why the run in `summary` (summary.json's dict) is over budget, or '' when it is within it.

    Over budget: more than max_error_fraction (in [0, 1]) of the inputs failed, or more than
    max_errors (>= 0; -1 = no absolute limit) did. A run with no inputs at all has failed on none.
    """
    inputs, errors = int(summary.get("inputs", 0)), int(summary.get("errors", 0))
    declared: dict = summary["input"] if isinstance(summary.get("input"), dict) else {}
    if "embeddings" in summary and declared.get("images"):  # embed: an unreadable range is one line for many
        inputs = max(inputs, int(declared["images"]))
        errors = max(errors, inputs - int(summary["embeddings"]))
    if errors == 0:
        return ""
    share = min(1.0, errors / inputs) if inputs else 1.0
    if share > max_error_fraction:
        what = f"all {inputs} inputs failed" if errors >= inputs else f"{errors} of {inputs} inputs failed"
        return f"{what} ({share:.1%} > --max_error_fraction {max_error_fraction:g})"
    if 0 <= max_errors < errors:
        return f"{errors} of {inputs} inputs failed (> --max_errors {max_errors})"
    return ""


def error_report(summary: dict, reason: str, where: str, first: list[dict] | None = None) -> str:
    """The lines printed (and written next to the staging output) for a run over budget; `first`: a few
    error lines (dicts with stage and message) shown as examples."""
    lines = [f"medprep: error: over the error budget: {reason}; nothing was committed", ""]
    by_class = summary.get("errors_by_class") or {}
    by_stage = summary.get("errors_by_stage") or {}
    if by_class:
        lines.append("errors by class:")
        lines += [f"  {n:>7}  {name}" for name, n in sorted(by_class.items(), key=lambda kv: (-kv[1], kv[0]))]
    if by_stage:
        lines.append("errors by stage:")
        lines += [f"  {n:>7}  {name}" for name, n in sorted(by_stage.items(), key=lambda kv: (-kv[1], kv[0]))]
    if first:
        lines.append("first errors:")
        lines += [f"  [{e.get('stage', '?')}] {e.get('message', '')}" for e in first]
    lines += [
        "",
        f"the run's outputs, its error lines (errors/) and summary.json are in {where}",
        "fix the inputs (or raise --max_error_fraction / --max_errors) and run again",
    ]
    return "\n".join(lines) + "\n"
