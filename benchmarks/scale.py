"""Time and memory at a real model's shape with random weights (`--random-weights --shape NAME`).

Timing and memory do not depend on the weights, so a model built from a published config with
random weights (`kvcrush.load_model("random:llama-3-8b")`, see `kvcrush.models.shapes`) measures
what a long context costs at that shape: prefill, the policy's scoring, KVCrush's grouping, KV bytes
before and after eviction (real tensors), decode time per token with the compressed versus the full
cache, and peak memory (CUDA: `torch.cuda.max_memory_allocated`, reset per run; CPU: the process's
resident high-water mark, reset per run where Linux allows it, and it includes the weights).
Quality is meaningless here and is not measured.

Per length, the kvpress presses run first (each prefills under its own hooks); then our engine
prefills once (`engines.ItemRuns`) and serves the full cache and every policy x budget from it. Our
runs' peak memory is the larger of that prefill's peak and the run's own (the prepared prompt stays
resident during the run, as it does in a standalone `kvcrush.generate`), so it reads as a standalone
run's. KVCrush rows also carry its overhead over its base policy on the same prefill and scores
(`engines.kvcrush_overhead`: ``overhead_s``, ``overhead_pct`` of end-to-end latency).

On a CPU the default shape is reduced to `--layers 2` (per-layer costs are the same, totals scale
with the layer count); on a GPU the same command runs at full shape. The prompt is real essay text
(the packaged tokenizer's ids, all inside every shape's vocabulary).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.engines import ItemRuns, kvcrush_overhead
from benchmarks.env import peak_cuda_bytes, peak_rss_bytes, reset_peak_cuda, reset_peak_rss
from benchmarks.grid import ENGINE_KVPRESS, PolicySpec
from benchmarks.outcome import NAN, Outcome
from benchmarks.tasks import Item
from kvcrush.data import filler_tokens
from kvcrush.prompts import EncodedPrompt

CPU_LENGTHS = (2048, 4096)
GPU_LENGTHS = (8192, 16384, 32768)
SCALE_POLICIES = ("snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv")


def scale_items(tokenizer, lengths: list[int], max_new_tokens: int) -> list[Item]:
    return [Item("scale", "essay", n, f"essay-{n}", EncodedPrompt(list(filler_tokens(tokenizer, n, 0)), []),
                 max_new_tokens=max_new_tokens) for n in lengths]


class _Peak:
    """Peak memory of one phase: GPU bytes allocated (CUDA) and the process's resident high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        reset_peak_cuda(device)
        self.rss_reset = reset_peak_rss()

    def read(self) -> tuple[int | None, int]:
        return peak_cuda_bytes(self.device), peak_rss_bytes()


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def measure_scale(
    lm,
    lengths: list[int],
    specs: list[PolicySpec],
    budgets: list[float],
    seed: int,
    max_new_tokens: int = 32,
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (length, policy, budget), plus the full cache at each length."""
    from tqdm.auto import tqdm  # ships with transformers

    items = scale_items(lm.tokenizer, lengths, max_new_tokens)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=1 + len(items) * (1 + len(specs) * len(budgets)), disable=not show_progress, file=sys.stderr,
               dynamic_ncols=True, unit="run")
    warm = ItemRuns(lm, items[0], seed)
    warm.full()  # warm-up, discarded
    warm.close()
    bar.update(1)
    for item in items:
        rows.extend(_measure_length(lm, item, specs, budgets, seed, log, bar))
    bar.close()
    return rows


def _measure_length(lm, item: Item, specs: list[PolicySpec], budgets: list[float], seed: int,
                    log: Callable[[str], None], bar) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    theirs = [spec for spec in specs if spec.engine == ENGINE_KVPRESS]
    ours = [spec for spec in specs if spec.engine != ENGINE_KVPRESS]
    runs = ItemRuns(lm, item, seed)
    full_decode = NAN

    def run(spec: PolicySpec | None, budget: float, prefill_peak: tuple[int | None, int] | None) -> None:
        nonlocal full_decode
        label = spec.label if spec else "full"
        bar.set_postfix_str(f"{item.length} {label} {budget:.0%}")
        peak = _Peak(lm.device)
        try:
            outcome = runs.full() if spec is None else runs.run(spec, budget)
            base = runs.run_base(spec, budget) if spec is not None and spec.is_kvcrush else None
        except torch.OutOfMemoryError as error:
            log(f"  ! out of memory: {label} at {item.length} tokens: {error}")
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            return
        finally:
            bar.update(1)
        gpu, rss = peak.read()
        if prefill_peak is not None:
            gpu, rss = _max(gpu, prefill_peak[0]), max(rss, prefill_peak[1])
        if spec is None:
            full_decode = outcome.decode_ms_per_token
        rows.append(_row(lm, item, spec, budget, outcome, base, full_decode, gpu, rss, peak.rss_reset))

    for budget in budgets:
        for spec in theirs:
            run(spec, budget, None)
    peak = _Peak(lm.device)
    try:
        runs.prepared()  # our engine's one prefill at this length
    except torch.OutOfMemoryError as error:
        log(f"  ! out of memory: prefill at {item.length} tokens: {error}")
        if lm.device.type == "cuda":
            torch.cuda.empty_cache()
        bar.update(1 + len(ours) * len(budgets))
        return rows
    prefill_peak = peak.read()
    run(None, 1.0, prefill_peak)
    for budget in budgets:
        for spec in ours:
            run(spec, budget, prefill_peak)
    runs.close()
    for row in rows:
        row["full_decode_ms_per_token"] = full_decode
    return rows


def _row(lm, item: Item, spec: PolicySpec | None, budget: float, outcome: Outcome, base: Outcome | None,
         full_decode: float, peak_gpu: int | None, peak_rss: int, rss_reset: bool) -> dict[str, Any]:
    e2e = outcome.e2e_s
    overhead = kvcrush_overhead(outcome, base) if base is not None else {
        "base_policy_s": NAN, "overhead_s": NAN, "overhead_pct": NAN,
        "crush_pct": 100 * outcome.crush_s / e2e if e2e else NAN}
    return {
        "shape": lm.name, "layers": lm.n_layers, "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""), "length": item.length, "policy": spec.label if spec else "full",
        "engine": spec.engine if spec else "ours", "budget": budget,
        "prefill_s": outcome.prefill_s, "score_s": outcome.score_s, "select_s": outcome.select_s,
        "crush_s": outcome.crush_s, "decode_s": outcome.decode_s, "decode_tokens": outcome.decode_tokens,
        "decode_ms_per_token": outcome.decode_ms_per_token, "full_decode_ms_per_token": full_decode,
        "e2e_s": e2e, "crush_pct": overhead["crush_pct"],
        "score_pct": 100 * outcome.score_s / e2e if e2e else NAN,
        "base_policy_s": overhead["base_policy_s"], "overhead_s": overhead["overhead_s"],
        "overhead_pct": overhead["overhead_pct"],
        "kv_bytes_before": outcome.kv_bytes_before, "kv_bytes_after": outcome.kv_bytes_after,
        "kv_fraction": outcome.kv_fraction,
        "peak_gpu_bytes": peak_gpu if peak_gpu is not None else NAN,
        "peak_rss_bytes": peak_rss, "rss_peak_is_per_run": rss_reset,
    }
