"""Aggregate benchmark records and write the results folder: CSV, JSON, markdown, Plotly HTML.

Files (all in one folder; `benchmarks/README.md` explains every column):

- ``results.csv``: one row per task x dataset x policy x budget, averaged over samples (and lengths).
- ``breakdown.csv``: the same per context length (needle at 1k/2k/4k, ...).
- ``samples.csv``: one row per run (every sample, policy, budget), with the generated text.
- ``parity.csv``: kept-token overlap of our policies with their kvpress counterparts on one prompt.
- ``overhead.csv``, ``scale.csv``: KVCrush's overhead over its base policy; random-weight timing and memory.
- ``summary.json``: settings, seeds, comparisons, memory, overhead, durations and the environment.
- ``report.md``, ``chart.html`` (score versus budget per policy, and versus the KV bytes kept with the
  Pareto front, `benchmarks.pareto`), ``environment.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.grid import PARITY_PAIRS, base_label, paper_label
from benchmarks.markdown import interval_text, is_nan, markdown_table, mean_interval_text
from benchmarks.pareto import front_markdown, front_rows, storage_text
from benchmarks.stats import bootstrap_mean, mcnemar_exact, paired_bootstrap
from benchmarks.verdicts import headline_markdown, replace_headline, verdicts_markdown
from kvcrush import POLICIES

RESULT_COLUMNS = [
    "task", "dataset", "policy", "engine", "method", "base", "anchor", "kv_bits", "representative_bits",
    "equal_bytes", "budget", "compression_ratio",
    "score", "score_low", "score_high", "score_name", "higher_is_better", "score_std", "n",
    "dense_name", "dense", "dense_low", "dense_high", "full_score", "delta_vs_full",
    "change_vs_full_pct", "em_vs_full", "token_agreement", "f1_vs_gold", "em_vs_gold", "contains_gold",
    "kv_fraction", "kv_bytes_before", "kv_bytes_after", "kept_tokens", "budget_bytes", "context_tokens",
    "prefill_s", "score_s", "select_s", "crush_s", "decode_s", "decode_tokens", "decode_ms_per_token", "seed",
]
BREAKDOWN_COLUMNS = RESULT_COLUMNS[:2] + ["length"] + RESULT_COLUMNS[2:]
EXTRA_METRICS = ("em_vs_full", "token_agreement", "f1_vs_gold", "em_vs_gold", "contains_gold")
MEAN_FIELDS = ("kv_fraction", "kv_bytes_before", "kv_bytes_after", "kept_tokens", "budget_bytes", "n_context",
               "prefill_s", "score_s", "select_s", "crush_s", "decode_s", "decode_tokens", "decode_ms_per_token")
# Per-sample differences within these are ties when comparing two policies (NLL: 0.01 nats/token).
TIE_TOLERANCE = {"nll": 0.01, "gold_nll": 0.01}
# The dense companion of each primary score: the gold answer's teacher-forced NLL (nats/token, lower is
# better) moves before a hit flips; the likelihood task's primary score is already dense.
DENSE_METRIC = {"hit": "gold_nll", "f1_vs_full": "gold_nll", "nll": "nll"}
BINARY_SCORES = ("hit",)  # 0/1 per sample: paired with McNemar's exact test
PAPER_DROP_PCT = 1.0  # the paper: < 1% accuracy drop at 4x KV reduction
PAPER_OVERHEAD_PCT = 0.5  # the paper: < 0.5% latency overhead


# ---------------------------------------------------------------------------------------------
# Aggregation


# A record's storage (older runs, before quantized caches, have none: the model's dtype, token budgets).
STORAGE_DEFAULTS = {"kv_bits": 16, "representative_bits": math.nan, "equal_bytes": False}
# Taken from each group's first record: they describe the system, the same on every sample.
FIRST_FIELDS = ("engine", "method", "base", "anchor", "kv_bits", "representative_bits", "equal_bytes", "score_name",
                "higher_is_better")


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The records as a frame, with the storage columns older runs lack."""
    frame = pd.DataFrame(records)
    for column, default in STORAGE_DEFAULTS.items():
        if not frame.empty and column not in frame:
            frame[column] = default
    return frame


def _first(values: pd.Series) -> Any:
    """A group's first value, NaN included (`GroupBy.first` would skip to the first non-null one)."""
    return values.iloc[0]


def _mean(values: pd.Series) -> float:
    """`Series.mean` of a group (NaN skipped). Not agg's "mean": its Cython kernel sums with Kahan compensation,
    which moves the last digit of 607 numbers of the committed summary.json (measured; no printed one)."""
    return float(values.mean())


def _std(values: pd.Series) -> float:
    """Population standard deviation (ddof 0) of a group's scores (agg's "std" takes no ddof)."""
    return float(values.std(ddof=0))


def _dense_values(frame: pd.DataFrame) -> pd.Series:
    """Each record's dense companion of its primary score (`DENSE_METRIC`); NaN where the run lacks that column."""
    dense = pd.Series(math.nan, index=frame.index)
    names = frame["score_name"].astype(str).map(DENSE_METRIC)
    for name in names.dropna().unique():
        if name in frame:
            rows = names == name
            dense[rows] = pd.to_numeric(frame.loc[rows, name], errors="coerce")
    return dense


def aggregate(records: list[dict[str, Any]], keys: tuple[str, ...], seed: int) -> pd.DataFrame:
    """Mean over samples of every metric, with the full cache's score on the same samples.

    One `groupby(keys).agg`: the system's fields from its first record, the score and its dense companion as
    `stats.bootstrap_mean` intervals (split into mean, low and high after), the rest as means over samples.
    """
    frame = records_frame(records)
    if frame.empty:
        return pd.DataFrame(columns=list(keys) + RESULT_COLUMNS)
    full = frame[frame["policy"] == "full"].set_index(["task", "dataset", "sample"])["score"]
    if full.index.has_duplicates:
        twice = full.index[full.index.duplicated()].unique().tolist()
        raise ValueError(f"{len(twice)} (task, dataset, sample) have more than one full-cache record, e.g. {twice[0]}:"
                         " each sample's full score must be one number.")
    samples = pd.MultiIndex.from_frame(frame[["task", "dataset", "sample"]])
    metrics = [name for name in EXTRA_METRICS + MEAN_FIELDS if name in frame]
    frame = frame.assign(
        _budget=frame["budget"], _score=pd.to_numeric(frame["score"], errors="coerce"), _dense=_dense_values(frame),
        _full=full.reindex(samples).to_numpy(),  # the full cache's score on the record's sample
        **{name: pd.to_numeric(frame[name], errors="coerce") for name in MEAN_FIELDS if name in frame},
    )
    # Every output named `_<column>`: `agg` reads a keyword named `engine` as its numba switch, not a column.
    out = frame.groupby(list(keys), sort=False, dropna=False).agg(
        **{f"_{name}": (name, _first) for name in FIRST_FIELDS}, budget_first=("_budget", _first),
        score=("_score", bootstrap_mean), dense=("_dense", bootstrap_mean), score_std=("score", _std),
        n=("score", "size"), full_score=("_full", _mean), **{name: (name, _mean) for name in metrics},
    ).rename(columns={f"_{name}": name for name in FIRST_FIELDS}).reset_index()
    for name in ("score", "dense"):  # Interval objects to mean, low, high columns
        intervals = out[name].tolist()
        out[name], out[f"{name}_low"], out[f"{name}_high"] = ([getattr(i, part) for i in intervals]
                                                               for part in ("mean", "low", "high"))
    out = out.astype({"kv_bits": int, "equal_bytes": bool, "higher_is_better": bool, "n": int}).assign(
        compression_ratio=[round(1.0 - float(b), 6) for b in out["budget_first"]],
        dense_name=[DENSE_METRIC.get(str(name), "") for name in out["score_name"]],
        delta_vs_full=out["score"] - out["full_score"], seed=seed,
    ).drop(columns="budget_first").rename(columns={"n_context": "context_tokens"})
    out["change_vs_full_pct"] = (100.0 * out["delta_vs_full"] / out["full_score"].abs()).where(out["full_score"] != 0)
    for name in EXTRA_METRICS + MEAN_FIELDS:  # metrics this run did not record
        column = "context_tokens" if name == "n_context" else name
        if column not in out:
            out[column] = math.nan
    return out.reindex(columns=[c for c in BREAKDOWN_COLUMNS if c in out.columns])


def results_table(records: list[dict[str, Any]], seed: int) -> pd.DataFrame:
    frame = aggregate(records, ("task", "dataset", "policy", "budget"), seed)
    return frame.reindex(columns=RESULT_COLUMNS)


def breakdown_table(records: list[dict[str, Any]], seed: int) -> pd.DataFrame:
    frame = aggregate(records, ("task", "dataset", "length", "policy", "budget"), seed)
    return frame.reindex(columns=BREAKDOWN_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Comparisons


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
        "score": _mean(pd.Series(left, dtype=float)), "versus_score": _mean(pd.Series(right, dtype=float)),
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


def paper_target(results: pd.DataFrame, budget: float = 0.25) -> list[dict[str, Any]]:
    """Change from the full cache at the paper's 4x reduction for every policy (target: < 1% drop)."""
    rows = []
    sel = results[(results["budget"] - budget).abs() < 1e-9]
    for _, row in sel.iterrows():
        change = float(row["change_vs_full_pct"])
        drop = -change if row["higher_is_better"] else change
        rows.append({
            "task": row["task"], "dataset": row["dataset"], "policy": row["policy"], "score": row["score"],
            "full_score": row["full_score"], "drop_pct": drop, "meets_target": bool(drop < PAPER_DROP_PCT),
        })
    return rows


def memory_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine, budget, storage (kv_bits, equal bytes) and prompt length: KV bytes after / before (real
    tensors), decode ms/token.

    Uses the needle prompts (else every prompt that decodes), whose lengths are fixed; the kept
    fraction's range is over every run of every task at that budget. Query-aware (``+qa``) runs are
    left out: their budget covers the question too, so their bytes are not comparable.
    """
    frame = records_frame(records)
    if frame.empty:
        return []
    frame = frame[~frame["policy"].astype(str).str.endswith("+qa")]  # their budget also covers the question
    decoding = frame[frame["task"] == "needle"]
    if decoding.empty:
        decoding = frame[frame["decode_tokens"] > 0]
    rows = []
    for length, at_length in decoding.groupby("length"):
        full = at_length[at_length["policy"] == "full"]
        compressed = at_length[at_length["policy"] != "full"]
        for (engine, budget, bits, equal_bytes), group in compressed.groupby(["engine", "budget", "kv_bits",
                                                                              "equal_bytes"]):
            everywhere = frame[(frame["engine"] == engine) & (frame["budget"] == budget) & (frame["kv_bits"] == bits)
                               & (frame["equal_bytes"] == equal_bytes)]["kv_fraction"]
            rows.append({
                "length": int(length), "engine": engine, "budget": float(budget), "kv_bits": int(bits),
                "equal_bytes": bool(equal_bytes),
                "context_tokens": float(group["n_context"].mean()),
                "kv_fraction_mean": float(group["kv_fraction"].mean()),
                "kv_fraction_min": float(everywhere.min()), "kv_fraction_max": float(everywhere.max()),
                "kv_bytes_before_mean": float(group["kv_bytes_before"].mean()),
                "kv_bytes_after_mean": float(group["kv_bytes_after"].mean()),
                "decode_ms_per_token": float(group["decode_ms_per_token"].mean()),
                "full_decode_ms_per_token": float(full["decode_ms_per_token"].mean()),
            })
    return rows


# ---------------------------------------------------------------------------------------------
# Text


def score_tables(results: pd.DataFrame) -> str:
    """One table per task/dataset: policies as rows, budgets as columns, full cache as the first row."""
    parts = []
    if results.empty:
        return "(no results)"
    for (task, dataset), group in results.groupby(["task", "dataset"], sort=False):
        name = group["score_name"].iloc[0]
        better = "higher" if group["higher_is_better"].iloc[0] else "lower"
        budgets = sorted(b for b in group["budget"].unique() if b < 1.0)
        n = int(group["n"].max())
        full = group[group["policy"] == "full"]
        headers = ["policy", "engine"] + [f"{b:.0%}" for b in budgets] + ["kv kept @ budgets"]
        rows = []
        if not full.empty:
            rows.append(["full (reference)", "ours"] + [interval_text(full.iloc[0])] * len(budgets) + ["100%"])
        for policy, pgroup in group[group["policy"] != "full"].groupby("policy", sort=False):
            by_budget = pgroup.set_index("budget")
            cells = [interval_text(by_budget.loc[b]) if b in by_budget.index else "" for b in budgets]
            kept = "/".join(f"{100 * by_budget['kv_fraction'].get(b, math.nan):.1f}" for b in budgets)
            rows.append([policy, pgroup["engine"].iloc[0]] + cells + [kept])
        parts.append(f"### {task} / {dataset}: {name} ({better} is better, n = {n} per cell, mean [95% bootstrap"
                     " interval])\n\n"
                     + markdown_table(headers, rows))
    return "\n\n".join(parts)


VERDICT_MARK = {"better": "▲", "worse": "▼", "no difference detected": "="}


def _best_cell(row: dict[str, Any], prefix: str) -> str:
    """``mean [low, high]`` of the best / best-of-ours / best-of-kvpress entry of a `best_systems` row."""
    if not row.get(prefix):
        return ""
    return mean_interval_text(row.get(f"{prefix}_score"), row.get(f"{prefix}_low"), row.get(f"{prefix}_high"))


def best_table(best: list[dict[str, Any]]) -> str:
    """Per task and budget: the best system overall, of ours, of kvpress's, and ours minus kvpress's."""
    if not best:
        return "(no results)"
    rows = []
    for r in best:
        diff = ""
        if r.get("ours_minus_kvpress") is not None and not is_nan(r.get("ours_minus_kvpress")):
            diff = (f"{VERDICT_MARK.get(r['verdict'], '')} {r['ours_minus_kvpress']:+.3f} [{r['diff_low']:+.3f}, "
                    f"{r['diff_high']:+.3f}] p={r['p_value']:.2g}")
        rows.append([f"{r['task']}/{r['dataset']}", r["score_name"], r["setting"], f"{r['budget']:.0%}", r["best"],
                     _best_cell(r, "best"), r.get("ours", ""), _best_cell(r, "ours"), r.get("kvpress", ""),
                     _best_cell(r, "kvpress"), diff])
    return markdown_table(["task", "score", "setting", "budget", "best", "score", "best of ours", "score",
                           "best of kvpress", "score", "ours - kvpress"], rows)


def comparison_cell(r: dict[str, Any]) -> str:
    """``▲ +0.133 [+0.033, +0.233] p=0.03`` (▲ better, ▼ worse, = no difference detected), then the
    dense metric's difference the same way, then W/T/L; the rival is named when it varies (best kvpress)."""
    named = f" vs {r['versus']}" if r.get("role") == "best kvpress" else ""
    text = (f"{VERDICT_MARK.get(r['verdict'], r['verdict'])} {r['delta']:+.3f} [{r['delta_low']:+.3f}, "
            f"{r['delta_high']:+.3f}] p={r['p_value']:.2g}")
    if r.get("dense_name") and r.get("dense_delta") is not None and not is_nan(r.get("dense_delta")):
        text += (f"; {r['dense_name']} {VERDICT_MARK.get(r['dense_verdict'], '')} {r['dense_delta']:+.3f} "
                 f"[{r['dense_low']:+.3f}, {r['dense_high']:+.3f}] p={r['dense_p']:.2g}")
    return f"{text}{named} ({r['wins']}/{r['ties']}/{r['losses']})"


def comparison_pivot(rows: list[dict[str, Any]]) -> str:
    """Paired comparisons as one table per task: rows = policy vs rival, columns = budgets (`comparison_cell`)."""
    if not rows:
        return "(no pairs to compare in this run)"
    parts = []
    tasks = list(dict.fromkeys((r["task"], r["dataset"]) for r in rows))
    for task, dataset in tasks:
        sub = [r for r in rows if r["task"] == task and r["dataset"] == dataset]
        budgets = sorted({r["budget"] for r in sub})
        keys = list(dict.fromkeys((r["policy"], r.get("role") or r["versus"]) for r in sub))
        table = []
        for policy, rival in keys:
            cells = []
            for budget in budgets:
                match = [r for r in sub if r["policy"] == policy and (r.get("role") or r["versus"]) == rival
                         and r["budget"] == budget]
                if not match:
                    cells.append("")
                    continue
                cells.append(comparison_cell(match[0]))
            table.append([policy, rival] + cells)
        name = sub[0]["score_name"]
        parts.append(f"**{task} / {dataset}** ({name}; delta = policy - rival with its 95% interval and p-value;"
                     f" n = {sub[0]['n']}; W/T/L = samples where the policy is better / equal / worse)\n\n"
                     + markdown_table(["policy", "versus"] + [f"{b:.0%}" for b in budgets], table))
    return "\n\n".join(parts)


def target_pivot(target: list[dict[str, Any]]) -> str:
    """Drop from the full cache at 25% budget: rows = policy, columns = task/dataset."""
    columns = list(dict.fromkeys(f"{t['task']}/{t['dataset']}" for t in target))
    policies = list(dict.fromkeys(t["policy"] for t in target))
    table = []
    for policy in policies:
        cells = []
        for column in columns:
            match = [t for t in target if t["policy"] == policy and f"{t['task']}/{t['dataset']}" == column]
            if not match or match[0]["drop_pct"] is None or math.isnan(match[0]["drop_pct"]):
                cells.append("")
            else:
                t = match[0]
                cells.append(f"{t['drop_pct']:.1f}%{' ✓' if t['meets_target'] else ''}")
        table.append([policy] + cells)
    return markdown_table(["policy"] + [f"{c} drop" for c in columns], table)


def render_markdown(summary: dict[str, Any], results: pd.DataFrame) -> str:
    """The human-readable report."""
    env = summary.get("environment", {})
    model = env.get("model", {})
    settings = summary.get("settings", {})
    lines = [
        f"# KVCrush benchmark: {summary.get('mode', '')} run",
        "",
        f"Command: `{env.get('command', '')}`  ",
        f"Model: {model.get('name', '')} ({model.get('layers', '')} layers, {model.get('query_heads', '')} query / "
        f"{model.get('kv_heads', '')} KV heads, head dim {model.get('head_dim', '')}, {model.get('dtype', '')}) on "
        f"{env.get('gpu') or env.get('cpu', '')} ({env.get('cpu_count', '')} cores, "
        f"{env.get('torch_threads', '')} torch threads).  ",
        f"torch {env.get('versions', {}).get('torch')}, transformers {env.get('versions', {}).get('transformers')}, "
        f"kvpress {env.get('versions', {}).get('kvpress')}.  ",
        f"Seed {settings.get('seed')}; wall time {summary.get('durations_s', {}).get('total', math.nan):.0f} s; "
        f"started {env.get('timestamp_utc', '')}.",
        "",
    ]
    if summary.get("dropped"):
        lines += ["**Reduced run.** " + " ".join(summary["dropped"]), ""]
    lines += [
        "Setting: query-agnostic for both engines (the context is compressed before the question is appended,"
        " as kvpress does); `+qa` rows are query-aware (ours: the question is the observation window and is"
        " kept; kvpress: the question is compressed with the context). Budget b keeps ceil(b*N) context tokens"
        " per KV head in our engine and kvpress keeps int(b*N) at compression ratio 1-b; 'kv kept' is the"
        " measured KV byte fraction (real tensors). Scores are means with 95% percentile-bootstrap intervals;"
        " paired comparisons use McNemar's exact test for hits and a paired bootstrap otherwise, and say"
        " 'no difference detected' (=) where p >= 0.05.",
        "",
        verdicts_markdown(summary),
        "",
        "## Best system per budget",
        "",
        best_table(summary.get("best", [])),
        "",
        "## Scores",
        "",
        score_tables(results),
        "",
        "## Quality versus KV bytes (Pareto front)",
        "",
        "Every (policy, budget, storage bits) of both engines and the full cache, query-agnostic: x is the share"
        " of the full cache's bytes kept (measured on the real tensors: packed codes, scales and the"
        " full-precision residual window count), y the task's mean score. A system is on the front when no other"
        " keeps no more bytes and scores at least as well; front membership is by the means, the intervals say"
        " how sure they are. `~N` rows store the kept rows at N bits with a budget in tokens; `~Nb` rows hold the"
        " bytes the full-precision cache holds at that budget, so more tokens (chart.html plots every point).",
        "",
        front_markdown(summary.get("pareto", [])),
        "",
    ]
    comp = summary.get("comparisons", {})
    lines += ["## KVCrush versus its base policy (same total budget)", "",
              "W/T/L counts samples where KVCrush is better / equal / worse (NLL ties within 0.01 nats); the"
              " verdict follows wins minus losses, so with one dominant sample it can disagree with the mean delta.",
              "",
              comparison_pivot(comp.get("kvcrush_vs_base", [])), ""]
    if comp.get("variants_vs_paper"):
        lines += ["## KVCrush variants beyond the paper versus the paper's KVCrush", "",
                  "Same base, anchor and budget; each variant is also in the table against its base above.", "",
                  comparison_pivot(comp["variants_vs_paper"]), ""]
    lines += ["## KVCrush versus kvpress", "",
              "Against kvpress's press for the same base idea (counterpart) and the best kvpress press of each cell.",
              "", comparison_pivot(comp.get("kvcrush_vs_kvpress", [])), ""]
    target = summary.get("paper_target", [])
    if target:
        lines += [f"## Paper target: < {PAPER_DROP_PCT:.0f}% drop from the full cache at 25% budget (4x)", "",
                  "Drop relative to the full cache's score on the same samples (NLL: the relative increase);"
                  " ✓ marks < 1%.", "", target_pivot(target), ""]
    lines += ["## Our policies versus their kvpress counterparts", "",
              comparison_pivot(comp.get("parity", [])), ""]
    parity = summary.get("parity_selection", [])
    if parity:
        rows = [[f"{p['budget']:.0%}", p["ours"], p["kvpress"], p["jaccard"], p["kept_tokens_ours"],
                 p["kept_tokens_kvpress"]] for p in parity]
        lines += [f"Kept-token overlap on one prompt ({parity[0]['sample']}, {parity[0]['n_context']} context tokens):"
                  " mean Jaccard over layers and KV heads.", "",
                  markdown_table(["budget", "ours", "kvpress", "Jaccard", "kept/head ours", "kept/head kvpress"], rows),
                  ""]
    lines += [KNOWN_DIFFERENCES, ""]
    overhead = summary.get("overhead", [])
    if overhead:
        lines += [overhead_markdown(overhead), ""]
    memory = summary.get("memory", [])
    if memory:
        rows = [[m["length"], m["engine"], f"{m['budget']:.0%}", storage_text(m), 100 * m["kv_fraction_mean"],
                 f"{100 * m['kv_fraction_min']:.1f}-{100 * m['kv_fraction_max']:.1f}",
                 m["kv_bytes_after_mean"] / 2**20, m["kv_bytes_before_mean"] / 2**20, m["decode_ms_per_token"],
                 m["full_decode_ms_per_token"]] for m in memory]
        lines += ["## Memory", "",
                  "KV bytes of the context after / before eviction, read from the cache tensors (needle prompts of"
                  " that length); the kept range is over every run of every task; decode ms/token with the"
                  " compressed cache versus the full cache on the same prompts.", "",
                  markdown_table(["tokens", "engine", "budget", "storage", "kv kept %", "range (all tasks) %",
                                  "KV MiB after",
                                  "KV MiB before", "decode ms/token", "full ms/token"], rows), ""]
    peaks = summary.get("peak_rss_mib", {})
    if peaks:
        lines += ["Peak process memory (resident high-water mark, MiB): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + ".", ""]
    scale = summary.get("scale", [])
    if scale:
        lines += [scale_markdown(scale), ""]
    errors = summary.get("errors", [])
    if errors:
        lines += [f"## Errors ({len(errors)})", ""] + [f"- {e['policy']} at {e['budget']:.0%} on {e['sample']}: "
                                                     f"{e['error']}" for e in errors[:20]] + [""]
    return "\n".join(lines)


def _overhead_cells(row: dict[str, Any]) -> list[Any]:
    """KVCrush's overhead columns of an overhead or scale row (older files lack them: empty cells)."""
    pct = row.get("overhead_pct", math.nan)
    if row.get("overhead_pct_min") is not None and not is_nan(pct):
        pct = f"{pct:.3f} ({row['overhead_pct_min']:.3f} to {row['overhead_pct_max']:.3f})"
    return [row.get("base_policy_s", math.nan), row.get("overhead_s", math.nan), pct]


def overhead_markdown(overhead: list[dict[str, Any]]) -> str:
    hooks = [o for o in overhead if str(o["policy"]).startswith("kvpress:")]
    overhead = [o for o in overhead if not str(o["policy"]).startswith("kvpress:")]
    if not overhead:
        return ""
    rows = [[o["length"], o["policy"], o["prefill_s"], o["score_s"], o["select_s"],
             *_overhead_cells(o), o["crush_s"], o.get("crush_pct", math.nan), o["decode_s"], o["decode_tokens"],
             o["e2e_s"]] for o in overhead]
    return "\n".join([
        f"## Overhead (paper target: KVCrush < {PAPER_OVERHEAD_PCT}% of end-to-end latency)", "",
        "Our engine, one prefill per repeat shared by every row of a length; e2e = prefill + scoring + selection +"
        f" decode of up to 32 tokens, medians of {overhead[0]['repeats']} repeat(s) (overhead %: smallest to largest"
        " repeat in brackets). **overhead** = KVCrush's"
        " policy time (scoring + selection + gather) minus its base policy's on the same prefill and the same"
        " scores: everything KVCrush adds; overhead % is its share of KVCrush's e2e. crush s / crush % is the"
        " part KVCrush times itself (signatures, grouping, refill), a breakdown.", "",
        markdown_table(["tokens", "policy", "prefill s", "score s", "select s", "base policy s", "overhead s",
                        "overhead %", "crush s", "crush %", "decode s", "tokens out", "e2e s"], rows),
    ] + ([] if not hooks else ["", _hook_comparison(hooks, overhead)]))


def _hook_comparison(hooks: list[dict[str, Any]], ours: list[dict[str, Any]]) -> str:
    """kvpress's own hook time against our policy time (scoring + selection + gather) for the same method."""
    rows = []
    for hook in hooks:
        method = str(hook["policy"]).split(":", 1)[1]
        mine = [o for o in ours if o["policy"] == method and o["length"] == hook["length"]]
        rows.append([hook["length"], hook["policy"], f"{hook['policy_s']:.4f} ({hook['policy_s_min']:.4f} to "
                     f"{hook['policy_s_max']:.4f})", method if mine else "",
                     f"{mine[0]['policy_s']:.4f} ({mine[0].get('policy_s_min', math.nan):.4f} to "
                     f"{mine[0].get('policy_s_max', math.nan):.4f})" if mine else ""])
    return ("kvpress's own hook (the press's compress over every layer, inside its forward hook) against our"
            " policy time for the same method (scoring + selection + gather, after the shared prefill); median"
            " (smallest to largest repeat), seconds.\n\n"
            + markdown_table(["tokens", "kvpress", "hook s", "ours", "policy s"], rows))


def scale_markdown(scale: list[dict[str, Any]]) -> str:
    first = scale[0]
    rows = [[s["length"], s["policy"], f"{s['budget']:.0%}", s["prefill_s"], s["score_s"], s["select_s"],
             s.get("overhead_s", math.nan), s.get("overhead_pct", math.nan), s["crush_s"], s["crush_pct"],
             s["kv_bytes_after"] / 2**20, s["kv_bytes_before"] / 2**20, s["decode_ms_per_token"],
             s["full_decode_ms_per_token"],
             (s["peak_gpu_bytes"] if isinstance(s["peak_gpu_bytes"], int) else s["peak_rss_bytes"]) / 2**30]
            for s in scale]
    peak = "GPU peak GiB" if isinstance(first.get("peak_gpu_bytes"), int) else "RSS peak GiB"
    return "\n".join([
        f"## Scale: {first['shape']} with random weights, {first['layers']} layers, {first['dtype']} on "
        f"{first['device']}", "",
        "Timing and memory only (random weights); score s / select s / crush s summed over layers; our engine"
        " prefills once per length for every row; kvpress scoring is inside its prefill. overhead = KVCrush's"
        " scoring + selection minus its base's on the same scores; overhead % and crush % of e2e.", "",
        markdown_table(["tokens", "policy", "budget", "prefill s", "score s", "select s", "overhead s", "overhead %",
                        "crush s", "crush %", "KV MiB after", "KV MiB before", "decode ms/tok", "full ms/tok", peak],
                       rows),
    ])


KNOWN_DIFFERENCES = """### Known differences between the engines (by design, not bugs)

- **Rounding:** our budget keeps `ceil(b*N)` tokens per head, kvpress `int(b*N)`: at most one token apart.
- **SnapKV:** both use a 32-token observation window here (kvpress's default is 64; the benchmark passes 32).
  Our `snapkv` max-pools the window attention (kernel 5) as the project spec says; kvpress average-pools
  (zero padding). `snapkv-avg` is our SnapKV with kvpress's pooling. Both keep the window itself.
- **TOVA:** our `tova` averages the last query's attention over the query heads of each GQA group (each KV
  head keeps its own tokens); kvpress's TOVAPress averages all heads of the layer (all KV heads keep the same
  tokens). `tova@all` is ours with kvpress's reduction (`@all` exists for H2O, SnapKV, PyramidKV and KVCrush
  over them too). Both always keep the last token.
- **StreamingLLM / Knorm:** same rule on both sides (4 sink tokens + most recent; smallest key norms).
- **H2O vs ObservedAttention:** ours sums the attention a token receives and keeps a 32-token recent
  window; kvpress divides by the number of queries that can see the token and keeps no window.
- Same loop after compression: both engines append the question, decode greedily and score likelihoods with
  `kvcrush.decoding`, and count KV bytes with `kvcrush.kvcache.cache_bytes`.
- Timing: both prefills compute only the last position's logits (`logits_to_keep=1`). Our engine prefills
  each prompt once for every policy and budget (each run's `prefill_s` still counts that prefill);
  kvpress's scoring runs inside its prefill forward, so its `score_s`/`select_s` are empty."""


# ---------------------------------------------------------------------------------------------
# Chart


# Marker of a storage in the Pareto panel: the shape says the kept rows' bits, an open marker a budget in bytes.
BITS_SYMBOL = {16: "circle", 8: "diamond", 4: "square", 2: "triangle-up"}


def _storage_marker(row: pd.Series) -> str:
    symbol = BITS_SYMBOL.get(int(row.get("kv_bits", 16)), "circle")
    return symbol + "-open" if str(row.get("equal_bytes")) == "True" else symbol


def chart_html(results: pd.DataFrame, path: Path, title: str, embed_js: bool = True) -> None:
    """Per task/dataset, two panels: score versus budget per policy (95% intervals as error bars, the full
    cache dashed) and the Pareto view, score versus the share of the full cache's bytes actually kept
    (every policy, budget and storage: the marker's shape is the kept rows' bits, open for a budget in
    bytes; the front, `benchmarks.pareto.front_rows`, as a line through ringed points). `embed_js` puts
    plotly.js in the file so it works offline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(results[["task", "dataset"]].drop_duplicates().itertuples(index=False))
    if not panels:
        path.write_text("<html><body>No results.</body></html>")
        return
    titles = []
    for task, dataset in panels:
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        better = "higher" if sub["higher_is_better"].iloc[0] else "lower"
        name = f"{task} / {dataset}: {sub['score_name'].iloc[0]} ({better} is better)"
        titles += [f"{name} vs budget", f"{name} vs KV bytes kept (Pareto)"]
    fig = make_subplots(rows=len(panels), cols=2, subplot_titles=titles)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    policies = [p for p in dict.fromkeys(results["policy"]) if p != "full"]
    colors = {p: palette[i % len(palette)] for i, p in enumerate(policies)}
    fronts = front_rows(results)
    for index, (task, dataset) in enumerate(panels):
        row = index + 1
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        budgets = sorted(sub["budget"].unique())
        full = sub[sub["policy"] == "full"]
        if not full.empty:
            fig.add_trace(go.Scatter(
                x=[100 * min(budgets), 100], y=[float(full["score"].iloc[0])] * 2, mode="lines",
                line=dict(color="black", dash="dot"), name="full", legendgroup="full", showlegend=index == 0,
            ), row=row, col=1)
        for policy in policies:
            pol = sub[sub["policy"] == policy].sort_values("budget")
            if pol.empty:
                continue
            engine = pol["engine"].iloc[0]
            style = dict(color=colors[policy], dash="dash" if engine == "kvpress" else "solid",
                         width=3 if policy.startswith("kvcrush") else 1.5)
            low = pol["score_low"] if "score_low" in pol else pol["score"]
            high = pol["score_high"] if "score_high" in pol else pol["score"]
            fig.add_trace(go.Scatter(
                x=(100 * pol["budget"]).tolist(), y=pol["score"].tolist(), mode="lines+markers", name=policy,
                legendgroup=policy, showlegend=index == 0, line=style,
                error_y=dict(type="data", symmetric=False, array=(high - pol["score"]).tolist(),
                             arrayminus=(pol["score"] - low).tolist(), thickness=1),
                customdata=pol[["kv_fraction", "n"]].to_numpy(),
                hovertemplate=f"{policy}<br>budget %{{x:.0f}}%<br>score %{{y:.3f}}<br>kv kept %{{customdata[0]:.3f}}"
                              "<br>n %{customdata[1]}<extra></extra>",
            ), row=row, col=1)
            fig.add_trace(go.Scatter(
                x=(100 * pol["kv_fraction"]).tolist(), y=pol["score"].tolist(), mode="markers", name=policy,
                legendgroup=policy, showlegend=False,
                marker=dict(color=colors[policy], size=8, symbol=[_storage_marker(r) for _, r in pol.iterrows()]),
                customdata=(100 * pol["budget"]).to_numpy(),
                hovertemplate=f"{policy}<br>budget %{{customdata:.0f}}%<br>kv kept %{{x:.1f}}% of the full cache's"
                              " bytes<br>score %{y:.3f}<extra></extra>",
            ), row=row, col=2)
        if not full.empty:
            fig.add_trace(go.Scatter(x=[100 * float(full["kv_fraction"].iloc[0])], y=[float(full["score"].iloc[0])],
                                     mode="markers", marker=dict(color="black", symbol="star", size=10), name="full",
                                     legendgroup="full", showlegend=False), row=row, col=2)
        front = [f for f in fronts if f["task"] == task and f["dataset"] == dataset]
        if front:
            fig.add_trace(go.Scatter(
                x=[100 * f["kv_fraction"] for f in front], y=[f["score"] for f in front], mode="lines+markers",
                line=dict(color="black", width=1), marker=dict(symbol="circle-open", size=15, color="black"),
                name="Pareto front", legendgroup="pareto", showlegend=index == 0,
                text=[f"{f['policy']} at {f['budget']:.0%}, {storage_text(f)}" for f in front],
                hovertemplate="front: %{text}<br>kv kept %{x:.1f}%<br>score %{y:.3f}<extra></extra>",
            ), row=row, col=2)
        fig.update_xaxes(title_text="budget (% of context KV kept: tokens, or bytes for ~Nb)", row=row, col=1)
        fig.update_xaxes(title_text="KV kept (% of the full cache's bytes, measured)", row=row, col=2)
    fig.update_layout(title=title, height=420 * len(panels), template="plotly_white")
    fig.write_html(path, include_plotlyjs=True if embed_js else "cdn", full_html=True)


# ---------------------------------------------------------------------------------------------
# Files


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean(value: Any) -> Any:
    """NaN/inf to None so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]] | pd.DataFrame, columns: list[str] | None = None,
              precise: bool = False) -> None:
    """CSV with 6 significant digits, or every digit (`precise`, for samples.csv, which re-renders read)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if columns is not None:
        frame = frame.reindex(columns=columns)
    frame.to_csv(path, index=False, float_format=None if precise else "%.6g")


def update_readme(summary: dict[str, Any], readme: Path | None = None) -> None:
    """Write the headline of `summary` into README.md between its markers (`benchmarks.verdicts`)."""
    readme = readme or Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(replace_headline(readme.read_text(), headline_markdown(summary)))


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of a samples.csv, as a run holds them: its text columns as strings ('' where empty)."""
    records = pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict(orient="records")
    for record in records:
        for key in ("base", "anchor", "text"):
            if not isinstance(record.get(key), str):
                record[key] = "" if record.get(key) is None or record.get(key) != record.get(key) else str(record[key])
    return records


def rerender(folder: Path, embed_js: bool = True) -> str:
    """Recompute tables, comparisons, report.md and chart.html of a results folder from its samples.csv.

    Useful after changing the report code, or to re-read an old run: ``python -m benchmarks.report DIR``.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    records = read_samples(folder / "samples.csv")
    seed = int(summary.get("settings", {}).get("seed", 0))
    results = results_table(records, seed)
    summary.update(comparisons=comparisons(records), paper_target=paper_target(results),
                   best=best_systems(records, results), memory=memory_summary(records),
                   pareto=front_rows(results), results=results.to_dict(orient="records"))
    write_csv(folder / "results.csv", results, RESULT_COLUMNS)
    write_csv(folder / "breakdown.csv", breakdown_table(records, seed), BREAKDOWN_COLUMNS)
    write_json(folder / "summary.json", summary)
    markdown = render_markdown(summary, results)
    (folder / "report.md").write_text(markdown + "\n")
    model = summary.get("environment", {}).get("model", {}).get("name", "")
    chart_html(results, folder / "chart.html", f"KVCrush benchmark ({summary.get('mode', '')}, {model})", embed_js)
    return markdown


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=rerender.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cdn-plotly", action="store_true", help="load plotly.js from its CDN (smaller file)")
    parser.add_argument("--readme", action="store_true", help="also write the headline into README.md")
    arguments = parser.parse_args()
    print(rerender(arguments.folder, not arguments.cdn_plotly))
    if arguments.readme:
        update_readme(json.loads((arguments.folder / "summary.json").read_text()))
