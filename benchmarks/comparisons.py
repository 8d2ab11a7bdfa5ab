"""Paired comparisons between systems on the same samples, and the best system of each cell.

- `comparisons`: KVCrush against its base policy, against kvpress's counterpart and best press, each
  variant beyond the paper against the paper's KVCrush, and our policies against their kvpress counterparts.
- `best_systems`: per task, dataset, budget and setting (`setting_of`), the best system overall, of ours and
  of kvpress's, the last two compared on the same samples.

Each pair is tested on the primary score with McNemar's exact test for 0/1 hits, a paired bootstrap
otherwise, and on the dense companion (`benchmarks.aggregate.DENSE_METRIC`) with a paired bootstrap
(`benchmarks.stats`, on scipy.stats). The markdown of these rows is `benchmarks.tables`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmarks.aggregate import DENSE_METRIC, group_mean
from benchmarks.grid import PARITY_PAIRS, base_label, paper_label
from benchmarks.stats import mcnemar_exact, paired_bootstrap
from kvcrush import POLICIES

# Per-sample differences within these are ties when comparing two policies (NLL: 0.01 nats/token).
TIE_TOLERANCE = {"nll": 0.01, "gold_nll": 0.01}
BINARY_SCORES = ("hit",)  # 0/1 per sample: paired with McNemar's exact test


def _paired_values(sel: pd.DataFrame, a: str, b: str, column: str) -> tuple[list[float], list[float]]:
    left = sel[sel["policy"] == a].set_index("sample")[column]
    right = sel[sel["policy"] == b].set_index("sample")[column]
    common = left.index.intersection(right.index)
    return ([float(v) for v in pd.to_numeric(left[common], errors="coerce")],
            [float(v) for v in pd.to_numeric(right[common], errors="coerce")])


def _verdict(test, higher: bool) -> str:
    """'better' / 'worse' when the 95% test rejects equality, else 'no difference detected'."""
    if not test.significant or math.isnan(test.difference.mean):
        return "no difference detected"
    return "better" if (test.difference.mean > 0) == higher else "worse"


def _paired(records: pd.DataFrame, a: str, b: str, task: str, dataset: str, budget: float) -> dict[str, Any] | None:
    """Policy `a` against `b` on the same samples at one budget, on the primary score and its dense companion.

    Primary: McNemar's exact test for hits, a paired bootstrap otherwise (`benchmarks.stats`); the dense
    metric (gold-answer NLL): paired bootstrap. `delta` is a - b (a's mean minus b's), with its 95%
    interval; `verdict` is for `a` ("better", "worse" or "no difference detected" at p >= 0.05);
    wins/ties/losses count samples (NLL ties within 0.01 nats).
    """
    sel = records[(records["task"] == task) & (records["dataset"] == dataset) & (records["budget"] == budget)]
    left, right = _paired_values(sel, a, b, "score")
    if not left:
        return None
    name = sel["score_name"].iloc[0]
    higher = bool(sel["higher_is_better"].iloc[0])
    tolerance = TIE_TOLERANCE.get(name, 1e-9)
    wins = ties = losses = 0
    for x, y in zip(left, right, strict=True):
        diff = x - y if higher else y - x
        if abs(diff) <= tolerance:
            ties += 1
        elif diff > 0:
            wins += 1
        else:
            losses += 1
    test = mcnemar_exact(left, right) if name in BINARY_SCORES else paired_bootstrap(left, right,
                                                                                     higher_is_better=higher)
    row = {
        "task": task, "dataset": dataset, "budget": budget, "policy": a, "versus": b, "score_name": name,
        "score": group_mean(pd.Series(left, dtype=float)), "versus_score": group_mean(pd.Series(right, dtype=float)),
        "delta": test.difference.mean,
        "delta_low": test.difference.low, "delta_high": test.difference.high, "p_value": test.p_value,
        "test": test.test, "wins": wins, "ties": ties, "losses": losses, "n": len(left),
        "verdict": _verdict(test, higher),
    }
    dense_name = DENSE_METRIC.get(str(name), "")
    if dense_name and dense_name != name and dense_name in sel:
        d_left, d_right = _paired_values(sel, a, b, dense_name)
        dense = paired_bootstrap(d_left, d_right, higher_is_better=False)
        row.update(dense_name=dense_name, dense_delta=dense.difference.mean, dense_low=dense.difference.low,
                   dense_high=dense.difference.high, dense_p=dense.p_value, dense_verdict=_verdict(dense, False))
    return row


# kvpress's closest press to each KVCrush base (the same scoring idea), as each policy declares it.
KVPRESS_COUNTERPART = {name: f"kvpress:{cls.kvpress_press}" for name, cls in POLICIES.items() if cls.kvpress_press}


def _best_press(frame: pd.DataFrame, task: str, dataset: str, budget: float) -> str | None:
    """The kvpress press with the best mean score in one cell."""
    sel = frame[(frame["task"] == task) & (frame["dataset"] == dataset) & (frame["budget"] == budget)
                & (frame["engine"] == "kvpress")]
    if sel.empty:
        return None
    means = sel.groupby("policy")["score"].mean()
    return str(means.idxmax() if bool(sel["higher_is_better"].iloc[0]) else means.idxmin())


def comparisons(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Paired per-sample comparisons.

    kvcrush_vs_base: every KVCrush spec against its base policy alone (same total budget).
    kvcrush_vs_kvpress: against kvpress's counterpart of its base (SnapKV -> SnapKVPress, H2O ->
    ObservedAttentionPress) and against the best kvpress press of that cell (`versus` names it).
    parity: our policies against their kvpress counterparts (`grid.PARITY_PAIRS`).
    variants_vs_paper: every KVCrush variant beyond the paper (``kvcrush:B:A:VARIANT``) against the paper's
    KVCrush with the same base, anchor and suffixes (``kvcrush:B:A``; `grid.paper_label`), so a ``repN``
    variant meets the paper's KVCrush at the same storage.
    """
    frame = pd.DataFrame(records)
    out: dict[str, list[dict[str, Any]]] = {"kvcrush_vs_base": [], "kvcrush_vs_kvpress": [], "parity": [],
                                            "variants_vs_paper": []}
    if frame.empty:
        return out
    policies = list(dict.fromkeys(frame["policy"]))
    cells = frame[frame["policy"] != "full"][["task", "dataset", "budget"]].drop_duplicates().itertuples(index=False)
    for task, dataset, budget in cells:
        best = _best_press(frame, task, dataset, budget)
        for policy in policies:
            base = base_label(policy)
            if base is None:
                continue
            if base in policies:
                row = _paired(frame, policy, base, task, dataset, budget)
                if row:
                    out["kvcrush_vs_base"].append(row)
            counterpart = None if policy.endswith("+qa") else KVPRESS_COUNTERPART.get(policy.split(":")[1])
            rivals = [counterpart, best]
            for rival, role in zip(rivals, ("counterpart", "best kvpress"), strict=True):
                if rival in policies:
                    row = _paired(frame, policy, rival, task, dataset, budget)
                    if row:
                        out["kvcrush_vs_kvpress"].append({**row, "role": role})
            paper = paper_label(policy)
            if paper is not None and paper in policies:
                row = _paired(frame, policy, paper, task, dataset, budget)
                if row:
                    out["variants_vs_paper"].append(row)
        for press, mine in PARITY_PAIRS.items():
            for ours in mine:
                if press in policies and ours in policies:
                    row = _paired(frame, ours, press, task, dataset, budget)
                    if row:
                        out["parity"].append(row)
    return out


def setting_of(label: str) -> str:
    """The setting a system is ranked in: ``query-aware`` (``+qa``), ``storage`` (rows stored in fewer bits or a
    budget in bytes, ``~N``/``~Nb``: equal bytes buy more tokens, a different question from which tokens to
    keep; the Pareto front compares them by bytes), else ``query-agnostic``."""
    if label.endswith("+qa"):
        return "query-aware"
    return "storage" if "~" in label else "query-agnostic"


def best_systems(records: list[dict[str, Any]], results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per task, dataset and budget: the best system overall, of ours and of kvpress's, with intervals.

    Best = highest mean primary score (lowest for NLL), ties broken by the dense metric. Query-aware
    (``+qa``) systems and stored-bits specs (``~N``, ``~Nb``) are ranked separately from the primary,
    query-agnostic setting of full-precision rows at token budgets (`setting_of`). The
    best of ours and the best of kvpress are compared on the same samples (`_paired`).
    """
    frame = pd.DataFrame(records)
    rows: list[dict[str, Any]] = []
    if frame.empty or results.empty:
        return rows
    res = results[results["policy"] != "full"].copy()
    res["setting"] = [setting_of(str(p)) for p in res["policy"]]
    for (task, dataset, budget, setting), cell in res.groupby(["task", "dataset", "budget", "setting"], sort=False):
        higher = bool(cell["higher_is_better"].iloc[0])
        sign = 1 if higher else -1
        ranked = cell.assign(_key=sign * cell["score"], _dense=-cell["dense"].fillna(math.inf)) \
            .sort_values(["_key", "_dense"], ascending=False)
        best = ranked.iloc[0]
        ours = ranked[ranked["engine"] == "ours"]
        theirs = ranked[ranked["engine"] == "kvpress"]
        row = {"task": task, "dataset": dataset, "budget": float(budget), "setting": setting,
               "score_name": best["score_name"], "higher_is_better": higher, "n": int(best["n"]),
               "best": best["policy"], "best_engine": best["engine"], "best_score": best["score"],
               "best_low": best["score_low"], "best_high": best["score_high"]}
        for prefix, group in (("ours", ours), ("kvpress", theirs)):
            if not group.empty:
                top = group.iloc[0]
                row.update({prefix: top["policy"], f"{prefix}_score": top["score"], f"{prefix}_low": top["score_low"],
                            f"{prefix}_high": top["score_high"]})
        if not ours.empty and not theirs.empty:
            pair = _paired(frame, row["ours"], row["kvpress"], task, dataset, budget)
            if pair:
                row.update(ours_minus_kvpress=pair["delta"], diff_low=pair["delta_low"], diff_high=pair["delta_high"],
                           p_value=pair["p_value"], verdict=pair["verdict"])
        rows.append(row)
    return rows
