"""Markdown tables and their cells, shared by every benchmark report (`benchmarks.report`, `benchmarks.pareto`,
`benchmarks.verdicts` and the smaller scripts' reports).

Kept apart from `benchmarks.report` so the modules that report imports (the Pareto front) can format their
tables without importing report back. Pure Python: no pandas, so anything may import it.
"""

from __future__ import annotations

import math
from typing import Any


def is_nan(value: Any) -> bool:
    """True for NaN, None and anything that is not a number (a missing cell, whichever way it was read back)."""
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def cell_text(value: Any, digits: int = 3) -> str:
    """One table cell: '' for None, yes/no for a bool, an int as is, '–' for NaN, other numbers at `digits`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    return f"{number:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; string cells are written as they are, the others through `cell_text`."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell_text(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_interval_text(mean: Any, low: Any, high: Any, digits: int = 3) -> str:
    """``0.533 [0.367, 0.700]``; the mean alone when a bound is missing, '–' when the mean is."""
    if is_nan(mean):
        return "–"
    if is_nan(low) or is_nan(high):
        return f"{float(mean):.{digits}f}"
    return f"{float(mean):.{digits}f} [{float(low):.{digits}f}, {float(high):.{digits}f}]"


def interval_text(row: Any, prefix: str = "score") -> str:
    """`mean_interval_text` of a results row's ``score``, ``score_low``, ``score_high`` (or `prefix`)."""
    return mean_interval_text(row.get(prefix, math.nan), row.get(f"{prefix}_low", math.nan),
                              row.get(f"{prefix}_high", math.nan))


__all__ = ["cell_text", "interval_text", "is_nan", "markdown_table", "mean_interval_text"]
