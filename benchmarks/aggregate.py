"""The results tables of a run: its records (one per sample, policy and budget) aggregated with pandas.

- `results_table` / `breakdown_table`: ``results.csv`` / ``breakdown.csv``, one `groupby(...).agg` over the
  records (`aggregate`): means over samples, 95% bootstrap intervals (`benchmarks.stats.bootstrap_mean`) of the
  score and its dense companion, the full cache's score on the same samples.
- `paper_target`: each policy's drop from the full cache at the paper's 4x reduction (Jha et al., 2025: < 1%).
- `memory_summary`: KV bytes and decode time per engine, budget, storage and prompt length (one `agg`).
- `read_samples`: a run's ``samples.csv`` back as the records it was written from.

`benchmarks/README.md` explains every column. The paired tests between systems are `benchmarks.comparisons`,
the markdown `benchmarks.tables`, the chart `benchmarks.chart`; `benchmarks.report` re-renders a folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.stats import bootstrap_mean

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
# The dense companion of each primary score: the gold answer's teacher-forced NLL (nats/token, lower is
# better) moves before a hit flips; the likelihood task's primary score is already dense.
DENSE_METRIC = {"hit": "gold_nll", "f1_vs_full": "gold_nll", "nll": "nll"}
PAPER_DROP_PCT = 1.0  # the paper: < 1% accuracy drop at 4x KV reduction
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


def group_mean(values: pd.Series) -> float:
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
        n=("score", "size"), full_score=("_full", group_mean), **{name: (name, group_mean) for name in metrics},
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


# A memory row's system: engine, budget and storage; its columns, in summary.json's order.
MEMORY_KEYS = ["engine", "budget", "kv_bits", "equal_bytes"]
MEMORY_COLUMNS = ["length", *MEMORY_KEYS, "context_tokens", "kv_fraction_mean", "kv_fraction_min", "kv_fraction_max",
                  "kv_bytes_before_mean", "kv_bytes_after_mean", "decode_ms_per_token", "full_decode_ms_per_token"]


def memory_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine, budget, storage (kv_bits, equal bytes) and prompt length: KV bytes after / before (real
    tensors), decode ms/token.

    Uses the needle prompts (else every prompt that decodes), whose lengths are fixed; the kept
    fraction's range is over every run of every task at that budget. Query-aware (``+qa``) runs are
    left out: their budget covers the question too, so their bytes are not comparable. Three `agg`s: the
    means per length and system, the kept range per system over every task, the full cache's decode time per
    length; rows sorted by length, then system.
    """
    frame = records_frame(records)
    if frame.empty:
        return []
    frame = frame[~frame["policy"].astype(str).str.endswith("+qa")]  # their budget also covers the question
    decoding = frame[frame["task"] == "needle"]
    if decoding.empty:
        decoding = frame[frame["decode_tokens"] > 0]
    compressed = decoding[decoding["policy"] != "full"]
    means = compressed.groupby(["length", *MEMORY_KEYS]).agg(
        context_tokens=("n_context", group_mean), kv_fraction_mean=("kv_fraction", group_mean),
        kv_bytes_before_mean=("kv_bytes_before", group_mean), kv_bytes_after_mean=("kv_bytes_after", group_mean),
        decode_ms_per_token=("decode_ms_per_token", group_mean),
    ).reset_index()
    if means.empty:
        return []
    kept_range = frame.groupby(MEMORY_KEYS)["kv_fraction"].agg(kv_fraction_min="min", kv_fraction_max="max")
    full_decode = decoding[decoding["policy"] == "full"].groupby("length")["decode_ms_per_token"].agg(group_mean)
    out = means.join(kept_range, on=MEMORY_KEYS).assign(full_decode_ms_per_token=means["length"].map(full_decode))
    return [{"length": int(row["length"]), "engine": row["engine"], "budget": float(row["budget"]),
             "kv_bits": int(row["kv_bits"]), "equal_bytes": bool(row["equal_bytes"]),
             **{name: float(row[name]) for name in MEMORY_COLUMNS[5:]}}
            for row in out.reindex(columns=MEMORY_COLUMNS).to_dict(orient="records")]


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of a samples.csv, as a run holds them: its text columns as strings ('' where empty)."""
    records = pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict(orient="records")
    for record in records:
        for key in ("base", "anchor", "text"):
            if not isinstance(record.get(key), str):
                record[key] = "" if record.get(key) is None or record.get(key) != record.get(key) else str(record[key])
    return records
