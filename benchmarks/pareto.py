"""Quality versus KV bytes: the Pareto front of every (policy, budget, storage bits) of a task.

A run measures each system's mean score and the mean share of the full cache's bytes it kept
(``kv_fraction``: bytes after / before eviction, read from the real tensors, so packed codes, scales and
the full-precision residual window of a quantized cache count). A point is on the front when no other
point keeps no more bytes and scores at least as well, one of the two strictly. Fronts are per task and
dataset, over the query-agnostic systems of both engines and the full cache; query-aware (``+qa``) rows are
left out, as in the memory table: their budget also covers the question, and they know it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmarks.grid import QA_SUFFIX
from benchmarks.markdown import interval_text, markdown_table

FRONT_COLUMNS = ("task", "dataset", "policy", "engine", "budget", "kv_bits", "representative_bits", "equal_bytes",
                 "kv_fraction", "kv_bytes_after", "kept_tokens", "score", "score_low", "score_high", "score_name",
                 "higher_is_better", "n")


@dataclass(frozen=True)
class Point:
    """One system in the quality-versus-bytes plane: `kv` kept (share of the full cache's bytes), its `score`."""

    kv: float
    score: float
    key: Any = None  # what the point stands for (a results row's index)


def pareto_front(points: list[Point], higher_is_better: bool) -> list[Point]:
    """The points no other point beats with less or equal KV and a better or equal score, by ascending KV.

    Of points with the same KV and score only the first in `points` order stays, so a front never
    lists two systems that are indistinguishable in both measures.
    """
    sign = 1 if higher_is_better else -1
    front: list[Point] = []
    best = -math.inf
    for point in sorted(points, key=lambda p: (p.kv, -sign * p.score)):  # stable: ties keep input order
        if sign * point.score > best:
            front.append(point)
            best = sign * point.score
    return front


def _candidates(cell: pd.DataFrame) -> pd.DataFrame:
    """The rows of one task that compete: query-agnostic, with a measured KV share and a score."""
    policy = cell["policy"].astype(str)
    keep = ~policy.str.endswith(QA_SUFFIX)
    keep &= pd.to_numeric(cell["kv_fraction"], errors="coerce").notna()
    keep &= pd.to_numeric(cell["score"], errors="coerce").notna()
    return cell[keep]


def front_rows(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per task and dataset, the results rows on the quality-versus-bytes front, by ascending KV kept.

    Each row carries `FRONT_COLUMNS` (storage columns default to 16 bits, token budget, for older
    results) plus ``candidates``: how many (policy, budget, bits) points the front was drawn from.
    """
    rows: list[dict[str, Any]] = []
    if results.empty:
        return rows
    for (task, dataset), cell in results.groupby(["task", "dataset"], sort=False):
        cell = _candidates(cell)
        if cell.empty:
            continue
        higher = bool(cell["higher_is_better"].iloc[0])
        points = [Point(float(row["kv_fraction"]), float(row["score"]), index) for index, row in cell.iterrows()]
        for point in pareto_front(points, higher):
            row = cell.loc[point.key]
            entry = {column: row.get(column, math.nan) for column in FRONT_COLUMNS}
            entry.update(task=task, dataset=dataset, candidates=len(points))
            entry["kv_bits"] = _int_or(entry["kv_bits"], 16)
            entry["equal_bytes"] = bool(entry["equal_bytes"]) if not _missing(entry["equal_bytes"]) else False
            rows.append(entry)
    return rows


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _int_or(value: Any, default: int) -> int:
    return default if _missing(value) else int(value)


def storage_text(row: dict[str, Any]) -> str:
    """``full precision``, ``4-bit, same bytes``, ``8-bit + 4-bit reps, same bytes`` ... for a results or front row
    (16 bits is the model's dtype: float32 on a CPU, so '16' would mislead)."""
    bits = _int_or(row.get("kv_bits"), 16)
    text = "full precision" if bits == 16 else f"{bits}-bit"
    representatives = row.get("representative_bits")
    if not _missing(representatives) and int(representatives) != bits:
        text += f" + {int(representatives)}-bit reps"
    if str(row.get("equal_bytes")) == "True":  # a bool, numpy's or read back from a CSV
        text += ", same bytes"
    return text


def front_markdown(rows: list[dict[str, Any]]) -> str:
    """One table per task and dataset: the front from the fewest bytes up."""
    if not rows:
        return "(no results)"
    parts = []
    for task, dataset in dict.fromkeys((r["task"], r["dataset"]) for r in rows):
        front = [r for r in rows if r["task"] == task and r["dataset"] == dataset]
        first = front[0]
        better = "higher" if first["higher_is_better"] else "lower"
        table = [[r["policy"], r["engine"], f"{r['budget']:.0%}", storage_text(r), 100 * r["kv_fraction"],
                  r["kv_bytes_after"] / 2**20, r["kept_tokens"], interval_text(r)] for r in front]
        parts.append(f"**{task} / {dataset}** ({first['score_name']}, {better} is better; {len(front)} of "
                     f"{first['candidates']} points on the front)\n\n"
                     + markdown_table(["policy", "engine", "budget", "storage", "KV kept % (bytes)", "KV MiB after",
                                       "tokens kept/head", "score"], table))
    return "\n\n".join(parts)


__all__ = ["FRONT_COLUMNS", "Point", "front_markdown", "front_rows", "pareto_front", "storage_text"]
