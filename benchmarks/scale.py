"""Time and memory at a real model's shape with random weights (`--random-weights --shape NAME`).

Timing and memory do not depend on the weights, so a model built from a published config with
random weights (`kvcrush.load_model("random:llama-3-8b")`, see `kvcrush.models.shapes`) measures
what a long context costs at that shape: prefill, the policy's scoring, KVCrush's grouping, KV bytes
before and after eviction (real tensors), decode time per token with the compressed versus the full
cache, and peak memory (CUDA: `torch.cuda.max_memory_allocated`, reset per run; CPU: the process's
resident high-water mark, reset per run where Linux allows it, and it includes the weights).
Quality is meaningless here and is not measured.

On a CPU the default shape is reduced to `--layers 2` (per-layer costs are the same, totals scale
with the layer count); on a GPU the same command runs at full shape. The prompt is real essay text
(the packaged tokenizer's ids, all inside every shape's vocabulary).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.engines import cuda_timing_hooks, run_full, run_spec
from benchmarks.env import peak_cuda_bytes, peak_rss_bytes, reset_peak_cuda, reset_peak_rss
from benchmarks.grid import PolicySpec
from benchmarks.tasks import Item
from kvcrush.data import filler_tokens
from kvcrush.prompts import EncodedPrompt

CPU_LENGTHS = (2048, 4096)
GPU_LENGTHS = (8192, 16384, 32768)
SCALE_POLICIES = ("snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv")


def scale_items(tokenizer, lengths: list[int], max_new_tokens: int) -> list[Item]:
    return [Item("scale", "essay", n, f"essay-{n}", EncodedPrompt(list(filler_tokens(tokenizer, n, 0)), []),
                 max_new_tokens=max_new_tokens) for n in lengths]


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
    items = scale_items(lm.tokenizer, lengths, max_new_tokens)
    rows: list[dict[str, Any]] = []
    jobs = [(item, None, 1.0) for item in items[:1]]  # warm-up
    for item in items:
        jobs.append((item, None, 1.0))
        jobs.extend((item, spec, budget) for budget in budgets for spec in specs)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(jobs, disable=not show_progress, file=sys.stderr, dynamic_ncols=True, unit="run")
    except ImportError:  # pragma: no cover
        bar = jobs
    full_decode: dict[int, float] = {}
    warmed = False
    with cuda_timing_hooks(lm):
        for item, spec, budget in bar:
            label = spec.label if spec else "full"
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"{item.length} {label} {budget:.0%}")
            reset_peak_cuda(lm.device)
            rss_reset = reset_peak_rss()
            try:
                outcome = run_full(lm, item) if spec is None else run_spec(lm, spec, budget, item, seed)
            except torch.OutOfMemoryError as error:
                log(f"  ! out of memory: {label} at {item.length} tokens: {error}")
                if lm.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if not warmed:
                warmed = True
                continue
            peak_gpu = peak_cuda_bytes(lm.device)
            select_s = outcome.select_s if math.isfinite(outcome.select_s) else 0.0  # kvpress: inside prefill
            e2e = outcome.prefill_s + select_s + outcome.decode_s
            if spec is None:
                full_decode[item.length] = outcome.decode_ms_per_token
            rows.append({
                "shape": lm.name, "layers": lm.n_layers, "device": str(lm.device),
                "dtype": str(lm.dtype).replace("torch.", ""), "length": item.length, "policy": label,
                "engine": spec.engine if spec else "ours", "budget": budget,
                "prefill_s": outcome.prefill_s, "score_s": outcome.score_s, "select_s": outcome.select_s,
                "crush_s": outcome.crush_s, "decode_s": outcome.decode_s, "decode_tokens": outcome.decode_tokens,
                "decode_ms_per_token": outcome.decode_ms_per_token,
                "full_decode_ms_per_token": full_decode.get(item.length, float("nan")),
                "e2e_s": e2e, "crush_pct": 100 * outcome.crush_s / e2e if e2e else float("nan"),
                "score_pct": 100 * outcome.score_s / e2e if e2e else float("nan"),
                "kv_bytes_before": outcome.kv_bytes_before, "kv_bytes_after": outcome.kv_bytes_after,
                "kv_fraction": outcome.kv_fraction,
                "peak_gpu_bytes": peak_gpu if peak_gpu is not None else float("nan"),
                "peak_rss_bytes": peak_rss_bytes(), "rss_peak_is_per_run": rss_reset,
            })
    return rows
