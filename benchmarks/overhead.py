"""KVCrush's selection overhead as a share of end-to-end latency (the paper claims under 0.5%).

For each context length a window of real essay tokens (no chat template) is prefilled, compressed and
continued for `max_new_tokens` greedy tokens on our engine. With the engine's `Timings`:

- end-to-end latency ``e2e_s = prefill_s + select_s + decode_s`` (the hook time `select_s` includes
  the base policy's scoring, the selection, KVCrush's grouping and the gather of the kept rows);
- ``crush_pct = 100 * crush_s / e2e_s``: KVCrush's own work (binary head signatures, anchor, Hamming
  distances, ordering and picking representatives, and building the buckets recorded in the trace),
  summed over layers;
- ``score_pct = 100 * score_s / e2e_s``: the base policy's scoring (e.g. SnapKV's window attention),
  which any eviction policy pays, beside it;
- ``select_pct = 100 * select_s / e2e_s``: everything the compression hook did.

The full cache's end-to-end latency on the same prompt is reported beside it. Every configuration is
repeated `repeats` times after one discarded full-cache run at that length; medians are reported.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.engines import Outcome, cuda_timing_hooks, run_full, run_spec
from benchmarks.grid import ENGINE_OURS, PolicySpec
from benchmarks.tasks import Item
from kvcrush.data import filler_tokens
from kvcrush.prompts import EncodedPrompt

TIME_FIELDS = ("prefill_s", "score_s", "select_s", "crush_s", "decode_s")


def overhead_items(tokenizer, lengths: list[int], max_new_tokens: int) -> list[Item]:
    items = []
    for length in lengths:
        ids = filler_tokens(tokenizer, length, offset=1_000)
        items.append(Item("overhead", "essay", length, f"essay-{length}", EncodedPrompt(list(ids), []),
                          max_new_tokens=max_new_tokens))
    return items


def _times(outcome: Outcome) -> dict[str, float]:
    times = {name: float(getattr(outcome, name)) for name in TIME_FIELDS}
    times["decode_tokens"] = outcome.decode_tokens
    times["e2e_s"] = outcome.prefill_s + outcome.select_s + outcome.decode_s
    return times


def measure_overhead(
    lm,
    lengths: list[int],
    specs: list[PolicySpec],
    budget: float,
    repeats: int,
    seed: int,
    max_new_tokens: int = 32,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (length, policy) with median timings and overhead percentages."""
    specs = [spec for spec in specs if spec.engine == ENGINE_OURS]
    items = overhead_items(lm.tokenizer, lengths, max_new_tokens)
    rows: list[dict[str, Any]] = []
    total = len(items) * ((1 + len(specs)) * repeats + 1)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, disable=not show_progress, file=sys.stderr, dynamic_ncols=True, unit="run")
    except ImportError:  # pragma: no cover
        bar = None
    with cuda_timing_hooks(lm):
        for item in items:
            rows.extend(_measure_length(lm, item, specs, budget, repeats, seed, bar))
    if bar is not None:
        bar.close()
    return rows


def _measure_length(lm, item: Item, specs: list[PolicySpec], budget: float, repeats: int, seed: int,
                    bar) -> list[dict[str, Any]]:
    """Median timings of the full cache and every spec on one prompt, after one discarded full run."""
    runners: list[tuple[str, PolicySpec | None, Callable[[], Outcome]]] = [("full", None, lambda: run_full(lm, item))]
    runners += [(spec.label, spec, lambda s=spec: run_spec(lm, s, budget, item, seed)) for spec in specs]
    run_full(lm, item)  # warm-up at this length
    if bar is not None:
        bar.update(1)
    measured: dict[str, list[dict[str, float]]] = {}
    for label, _, runner in runners:
        measured[label] = []
        for _ in range(repeats):
            measured[label].append(_times(runner()))
            if bar is not None:
                bar.update(1)
    full_e2e = statistics.median(run["e2e_s"] for run in measured["full"])
    rows = []
    for label, spec, _ in runners:
        median = {key: statistics.median(run[key] for run in measured[label]) for key in measured[label][0]}
        e2e = median["e2e_s"]
        rows.append({
            "length": item.length, "n_context": item.encoded.n_context, "policy": label,
            "base": spec.base if spec else "", "budget": budget if spec else 1.0, "repeats": repeats,
            **median,
            "decode_ms_per_token": 1000 * median["decode_s"] / median["decode_tokens"]
            if median["decode_tokens"] else float("nan"),
            "crush_pct": 100 * median["crush_s"] / e2e if e2e else float("nan"),
            "score_pct": 100 * median["score_s"] / e2e if e2e else float("nan"),
            "select_pct": 100 * median["select_s"] / e2e if e2e else float("nan"),
            "full_e2e_s": full_e2e,
        })
    return rows
