"""Aggregate benchmark records and write the results folder: CSV, JSON, markdown, Plotly HTML.

Files (all in one folder; `benchmarks/README.md` explains every column):

- ``results.csv``: one row per task x dataset x policy x budget, averaged over samples (and lengths).
- ``breakdown.csv``: the same per context length (needle at 1k/2k/4k, ...).
- ``samples.csv``: one row per run (every sample, policy, budget), with the generated text.
- ``parity.csv``: kept-token overlap of our policies with their kvpress counterparts on one prompt.
- ``overhead.csv``, ``scale.csv``: KVCrush's overhead over its base policy; random-weight timing and memory.
- ``summary.json``: settings, seeds, comparisons, memory, overhead, durations and the environment.
- ``report.md``, ``chart.html`` (score versus budget per policy), ``environment.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from kvcrush import POLICIES

RESULT_COLUMNS = [
    "task", "dataset", "policy", "engine", "method", "base", "anchor", "budget", "compression_ratio",
    "score", "score_name", "higher_is_better", "score_std", "n", "full_score", "delta_vs_full",
    "change_vs_full_pct", "em_vs_full", "token_agreement", "f1_vs_gold", "em_vs_gold", "contains_gold",
    "kv_fraction", "kv_bytes_before", "kv_bytes_after", "context_tokens", "prefill_s", "score_s", "select_s",
    "crush_s", "decode_s", "decode_tokens", "decode_ms_per_token", "seed",
]
BREAKDOWN_COLUMNS = RESULT_COLUMNS[:2] + ["length"] + RESULT_COLUMNS[2:]
EXTRA_METRICS = ("em_vs_full", "token_agreement", "f1_vs_gold", "em_vs_gold", "contains_gold")
MEAN_FIELDS = ("kv_fraction", "kv_bytes_before", "kv_bytes_after", "n_context", "prefill_s", "score_s",
               "select_s", "crush_s", "decode_s", "decode_tokens", "decode_ms_per_token")
# Per-sample differences within these are ties when comparing two policies (NLL: 0.01 nats/token).
TIE_TOLERANCE = {"nll": 0.01}
PAPER_DROP_PCT = 1.0  # the paper: < 1% accuracy drop at 4x KV reduction
PAPER_OVERHEAD_PCT = 0.5  # the paper: < 0.5% latency overhead


# ---------------------------------------------------------------------------------------------
# Aggregation


def _nanmean(values: Iterable[float]) -> float:
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(clean) / len(clean) if clean else math.nan


def aggregate(records: list[dict[str, Any]], keys: tuple[str, ...], seed: int) -> pd.DataFrame:
    """Mean over samples of every metric, with the full cache's score on the same samples."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=list(keys) + RESULT_COLUMNS)
    full = frame[frame["policy"] == "full"].set_index(["task", "dataset", "sample"])["score"]
    rows = []
    for group_key, group in frame.groupby(list(keys), sort=False, dropna=False):
        first = group.iloc[0]
        row = dict(zip(keys, group_key, strict=True))
        full_scores = [full.get((first["task"], first["dataset"], s), math.nan) for s in group["sample"]]
        score = float(group["score"].mean())
        full_score = _nanmean(full_scores)
        delta = score - full_score
        row.update(
            engine=first["engine"], method=first["method"], base=first["base"], anchor=first["anchor"],
            compression_ratio=round(1.0 - float(first["budget"]), 6), score=score, score_name=first["score_name"],
            higher_is_better=bool(first["higher_is_better"]),
            score_std=float(group["score"].std(ddof=0)), n=int(len(group)), full_score=full_score,
            delta_vs_full=delta, change_vs_full_pct=100.0 * delta / abs(full_score) if full_score else math.nan,
            seed=seed,
        )
        for name in EXTRA_METRICS:
            row[name] = float(group[name].mean()) if name in group else math.nan
        for name in MEAN_FIELDS:
            row[name] = float(pd.to_numeric(group[name], errors="coerce").mean()) if name in group else math.nan
        row["context_tokens"] = row.pop("n_context")
        rows.append(row)
    out = pd.DataFrame(rows)
    columns = [c for c in BREAKDOWN_COLUMNS if c in out.columns or c in keys]
    return out.reindex(columns=[c for c in columns if c in out.columns])


def results_table(records: list[dict[str, Any]], seed: int) -> pd.DataFrame:
    frame = aggregate(records, ("task", "dataset", "policy", "budget"), seed)
    return frame.reindex(columns=RESULT_COLUMNS)


def breakdown_table(records: list[dict[str, Any]], seed: int) -> pd.DataFrame:
    frame = aggregate(records, ("task", "dataset", "length", "policy", "budget"), seed)
    return frame.reindex(columns=BREAKDOWN_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Comparisons


def _paired(records: pd.DataFrame, a: str, b: str, task: str, dataset: str, budget: float) -> dict[str, Any] | None:
    """Per-sample comparison of policy `a` against `b` at one budget: wins/ties/losses for `a`."""
    sel = records[(records["task"] == task) & (records["dataset"] == dataset) & (records["budget"] == budget)]
    left = sel[sel["policy"] == a].set_index("sample")["score"]
    right = sel[sel["policy"] == b].set_index("sample")["score"]
    common = left.index.intersection(right.index)
    if common.empty:
        return None
    name = sel["score_name"].iloc[0]
    higher = bool(sel["higher_is_better"].iloc[0])
    tolerance = TIE_TOLERANCE.get(name, 1e-9)
    wins = ties = losses = 0
    for sample in common:
        diff = float(left[sample]) - float(right[sample])
        if not higher:
            diff = -diff
        if abs(diff) <= tolerance:
            ties += 1
        elif diff > 0:
            wins += 1
        else:
            losses += 1
    verdict = "win" if wins > losses else "lose" if losses > wins else "tie"
    return {
        "task": task, "dataset": dataset, "budget": budget, "policy": a, "versus": b, "score_name": name,
        "score": float(left[common].mean()), "versus_score": float(right[common].mean()),
        "delta": float(left[common].mean() - right[common].mean()), "wins": wins, "ties": ties,
        "losses": losses, "n": len(common), "verdict": verdict,
    }


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
    """
    from benchmarks.grid import PARITY_PAIRS, base_label

    frame = pd.DataFrame(records)
    out: dict[str, list[dict[str, Any]]] = {"kvcrush_vs_base": [], "kvcrush_vs_kvpress": [], "parity": []}
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
        for press, mine in PARITY_PAIRS.items():
            for ours in mine:
                if press in policies and ours in policies:
                    row = _paired(frame, ours, press, task, dataset, budget)
                    if row:
                        out["parity"].append(row)
    return out


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
    """Per engine, budget and prompt length: KV bytes after / before (real tensors), decode ms/token.

    Uses the needle prompts (else every prompt that decodes), whose lengths are fixed; the kept
    fraction's range is over every run of every task at that budget. Query-aware (``+qa``) runs are
    left out: their budget covers the question too, so their bytes are not comparable.
    """
    frame = pd.DataFrame(records)
    if frame.empty:
        return []
    frame = frame[~frame["policy"].astype(str).str.endswith("+qa")]  # their budget also covers the question
    decoding = frame[frame["task"] == "needle"]
    if decoding.empty:
        decoding = frame[frame["decode_tokens"] > 0]
    rows = []
    for length, at_length in decoding.groupby("length"):
        full = at_length[at_length["policy"] == "full"]
        for (engine, budget), group in at_length[at_length["policy"] != "full"].groupby(["engine", "budget"]):
            everywhere = frame[(frame["engine"] == engine) & (frame["budget"] == budget)]["kv_fraction"]
            rows.append({
                "length": int(length), "engine": engine, "budget": float(budget),
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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "–"
    return f"{number:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
            rows.append(["full (reference)", "ours"] + [float(full["score"].iloc[0])] * len(budgets) + ["100%"])
        for policy, pgroup in group[group["policy"] != "full"].groupby("policy", sort=False):
            by_budget = pgroup.set_index("budget")
            cells = [float(by_budget["score"].get(b, math.nan)) for b in budgets]
            kept = "/".join(f"{100 * by_budget['kv_fraction'].get(b, math.nan):.1f}" for b in budgets)
            rows.append([policy, pgroup["engine"].iloc[0]] + cells + [kept])
        parts.append(f"### {task} / {dataset}: {name} ({better} is better, n = {n} per cell)\n\n"
                     + markdown_table(headers, rows))
    return "\n\n".join(parts)


def comparison_pivot(rows: list[dict[str, Any]]) -> str:
    """Paired comparisons as one table per task: rows = policy vs rival, columns = budgets.

    A cell reads ``verdict delta (W/T/L)``; the rival's name is added when it varies (best kvpress).
    """
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
                r = match[0]
                named = f" vs {r['versus']}" if r.get("role") == "best kvpress" else ""
                cells.append(f"{r['verdict']} {r['delta']:+.3f}{named} ({r['wins']}/{r['ties']}/{r['losses']})")
            table.append([policy, rival] + cells)
        name = sub[0]["score_name"]
        parts.append(f"**{task} / {dataset}** ({name}; delta = policy - rival, n = {sub[0]['n']})\n\n"
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
        " as kvpress does). Budget b keeps ceil(b*N) context tokens per KV head in our engine and kvpress keeps"
        " int(b*N) at compression ratio 1-b; 'kv kept' is the measured KV byte fraction (real tensors).",
        "",
        "## Scores",
        "",
        score_tables(results),
        "",
    ]
    comp = summary.get("comparisons", {})
    lines += ["## KVCrush versus its base policy (same total budget)", "",
              "W/T/L counts samples where KVCrush is better / equal / worse (NLL ties within 0.01 nats); the"
              " verdict follows wins minus losses, so with one dominant sample it can disagree with the mean delta.",
              "",
              comparison_pivot(comp.get("kvcrush_vs_base", [])), ""]
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
        rows = [[m["length"], m["engine"], f"{m['budget']:.0%}", 100 * m["kv_fraction_mean"],
                 f"{100 * m['kv_fraction_min']:.1f}-{100 * m['kv_fraction_max']:.1f}",
                 m["kv_bytes_after_mean"] / 2**20, m["kv_bytes_before_mean"] / 2**20, m["decode_ms_per_token"],
                 m["full_decode_ms_per_token"]] for m in memory]
        lines += ["## Memory", "",
                  "KV bytes of the context after / before eviction, read from the cache tensors (needle prompts of"
                  " that length); the kept range is over every run of every task; decode ms/token with the"
                  " compressed cache versus the full cache on the same prompts.", "",
                  markdown_table(["tokens", "engine", "budget", "kv kept %", "range (all tasks) %", "KV MiB after",
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
    return [row.get("base_policy_s", math.nan), row.get("overhead_s", math.nan), row.get("overhead_pct", math.nan)]


def overhead_markdown(overhead: list[dict[str, Any]]) -> str:
    rows = [[o["length"], o["policy"], o["prefill_s"], o["score_s"], o["select_s"],
             *_overhead_cells(o), o["crush_s"], o.get("crush_pct", math.nan), o["decode_s"], o["decode_tokens"],
             o["e2e_s"]] for o in overhead]
    return "\n".join([
        f"## Overhead (paper target: KVCrush < {PAPER_OVERHEAD_PCT}% of end-to-end latency)", "",
        "Our engine, one prefill per repeat shared by every row of a length; e2e = prefill + scoring + selection +"
        f" decode of up to 32 tokens, medians of {overhead[0]['repeats']} repeat(s). **overhead** = KVCrush's"
        " policy time (scoring + selection + gather) minus its base policy's on the same prefill and the same"
        " scores: everything KVCrush adds; overhead % is its share of KVCrush's e2e. crush s / crush % is the"
        " part KVCrush times itself (signatures, grouping, refill), a breakdown.", "",
        markdown_table(["tokens", "policy", "prefill s", "score s", "select s", "base policy s", "overhead s",
                        "overhead %", "crush s", "crush %", "decode s", "tokens out", "e2e s"], rows),
    ])


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


def chart_html(results: pd.DataFrame, path: Path, title: str, embed_js: bool = False) -> None:
    """Score versus budget per policy, one panel per task/dataset; the full cache as a dashed line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(results[["task", "dataset"]].drop_duplicates().itertuples(index=False))
    if not panels:
        path.write_text("<html><body>No results.</body></html>")
        return
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    titles = []
    for task, dataset in panels:
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        better = "higher" if sub["higher_is_better"].iloc[0] else "lower"
        titles.append(f"{task} / {dataset}: {sub['score_name'].iloc[0]} ({better} is better)")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    policies = [p for p in dict.fromkeys(results["policy"]) if p != "full"]
    colors = {p: palette[i % len(palette)] for i, p in enumerate(policies)}
    for index, (task, dataset) in enumerate(panels):
        row, col = index // cols + 1, index % cols + 1
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        budgets = sorted(sub["budget"].unique())
        full = sub[sub["policy"] == "full"]
        if not full.empty:
            fig.add_trace(go.Scatter(
                x=[100 * min(budgets), 100], y=[float(full["score"].iloc[0])] * 2, mode="lines",
                line=dict(color="black", dash="dot"), name="full", legendgroup="full", showlegend=index == 0,
            ), row=row, col=col)
        for policy in policies:
            pol = sub[sub["policy"] == policy].sort_values("budget")
            if pol.empty:
                continue
            engine = pol["engine"].iloc[0]
            fig.add_trace(go.Scatter(
                x=(100 * pol["budget"]).tolist(), y=pol["score"].tolist(), mode="lines+markers", name=policy,
                legendgroup=policy, showlegend=index == 0,
                line=dict(color=colors[policy], dash="dash" if engine == "kvpress" else "solid",
                          width=3 if policy.startswith("kvcrush") else 1.5),
                customdata=pol[["kv_fraction", "n"]].to_numpy(),
                hovertemplate=f"{policy}<br>budget %{{x:.0f}}%<br>score %{{y:.3f}}<br>kv kept %{{customdata[0]:.3f}}"
                              "<br>n %{customdata[1]}<extra></extra>",
            ), row=row, col=col)
        fig.update_xaxes(title_text="budget (% of context KV kept)", row=row, col=col)
    fig.update_layout(title=title, height=420 * rows, template="plotly_white")
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


def rerender(folder: Path, embed_js: bool = False) -> str:
    """Recompute tables, comparisons, report.md and chart.html of a results folder from its samples.csv.

    Useful after changing the report code, or to re-read an old run: ``python -m benchmarks.report DIR``.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    records = pd.read_csv(folder / "samples.csv", keep_default_na=False, na_values=[""]).to_dict(orient="records")
    for record in records:
        for key in ("base", "anchor", "text"):
            if not isinstance(record.get(key), str):
                record[key] = "" if record.get(key) is None or record.get(key) != record.get(key) else str(record[key])
    seed = int(summary.get("settings", {}).get("seed", 0))
    results = results_table(records, seed)
    summary.update(comparisons=comparisons(records), paper_target=paper_target(results),
                   memory=memory_summary(records), results=results.to_dict(orient="records"))
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
    parser.add_argument("--embed-plotly", action="store_true")
    arguments = parser.parse_args()
    print(rerender(arguments.folder, arguments.embed_plotly))
