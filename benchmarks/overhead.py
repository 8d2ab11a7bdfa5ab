"""KVCrush's overhead as a share of end-to-end latency (the paper claims under 0.5%).

For each context length a window of real essay tokens (no chat template) is prefilled once per repeat
(`engines.ItemRuns`); on that one prefill the full cache, then every spec, are compressed and continued
for `max_new_tokens` greedy tokens on our engine. For a KVCrush spec its base policy (exactly the base
inside it: same options, same cached scores) is then selected and gathered on the same prefill without
decoding. With the engine's `Timings`:

- end-to-end latency ``e2e_s = prefill_s + score_s + select_s + decode_s`` (`Timings.total_s`);
- ``policy_s = score_s + select_s``: everything the policy cost (scoring, selection, gather);
- ``overhead_s = policy_s - base_policy_s``: KVCrush's whole extra cost over its base on the same
  scores (the scores are shared, so this is the signatures, anchor, distances, representatives,
  buckets and the refill of the importance part around them); ``overhead_pct = 100 * overhead_s /
  e2e_s`` is the number to hold against the paper's 0.5%;
- ``crush_pct = 100 * crush_s / e2e_s``: the part of it KVCrush times itself (a breakdown);
- ``score_pct``, ``select_pct``: the base scoring (which any eviction policy pays) and the selection
  with the gather, on the same scale.

The full cache's end-to-end latency on the same prompt is reported beside it. A kvpress spec in the
list (``kvpress:snapkv``) gets a row with its own hook time (``policy_s``: the press's ``compress`` over
every layer inside kvpress's forward hook), to hold against our SnapKV's ``policy_s``. Every configuration is
repeated `repeats` times after one discarded full-cache run at that length; medians are reported (for
the overhead, the median of the per-repeat differences), with the smallest and largest repeat
(``*_min``, ``*_max``) as the spread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: sleeping, not spinning, threads

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.cli import script_parser, settings_dict, start, write_outputs  # noqa: E402
from benchmarks.engines import ItemRuns, kvcrush_overhead  # noqa: E402
from benchmarks.grid import ENGINE_KVPRESS, ENGINE_OURS, PolicySpec  # noqa: E402
from benchmarks.outcome import NAN, Outcome  # noqa: E402
from benchmarks.tables import overhead_markdown  # noqa: E402
from benchmarks.tasks import Item  # noqa: E402
from kvcrush.data import filler_tokens  # noqa: E402
from kvcrush.prompts import EncodedPrompt  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "overhead"
TIME_FIELDS = ("prefill_s", "score_s", "select_s", "crush_s", "decode_s", "policy_s", "e2e_s")
OVERHEAD_FIELDS = ("base_score_s", "base_select_s", "base_policy_s", "overhead_s", "overhead_pct", "crush_pct")
SPREAD_FIELDS = ("policy_s", "overhead_s", "overhead_pct", "e2e_s")  # min and max over the repeats too


def overhead_items(tokenizer, lengths: list[int], max_new_tokens: int) -> list[Item]:
    items = []
    for length in lengths:
        ids = filler_tokens(tokenizer, length, offset=1_000)
        items.append(Item("overhead", "essay", length, f"essay-{length}", EncodedPrompt(list(ids), []),
                          max_new_tokens=max_new_tokens))
    return items


def _times(outcome: Outcome, base: Outcome | None = None) -> dict[str, float]:
    times = {name: float(getattr(outcome, name)) for name in TIME_FIELDS}
    times["decode_tokens"] = outcome.decode_tokens
    if base is not None:
        times.update(kvcrush_overhead(outcome, base))
    else:
        times.update({name: NAN for name in OVERHEAD_FIELDS})
        times["crush_pct"] = 100 * outcome.crush_s / outcome.e2e_s if outcome.e2e_s else NAN
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
    from tqdm.auto import tqdm  # ships with transformers

    presses = [spec for spec in specs if spec.engine == ENGINE_KVPRESS and not spec.query_aware]
    specs = [spec for spec in specs if spec.engine == ENGINE_OURS]
    items = overhead_items(lm.tokenizer, lengths, max_new_tokens)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(items) * ((1 + len(specs)) * repeats + 1), disable=not show_progress, file=sys.stderr,
               dynamic_ncols=True, unit="run")
    for item in items:
        rows.extend(_measure_length(lm, item, specs, budget, repeats, seed, bar))
        for press in presses:
            rows.append(_press_hook_row(lm, item, press, budget, repeats))
    bar.close()
    return rows


def _press_hook_row(lm, item: Item, spec: PolicySpec, budget: float, repeats: int) -> dict[str, Any]:
    """kvpress's own hook time for one press (its ``compress`` over every layer, synchronized), median and
    spread of `repeats` prefills: the counterpart of our ``policy_s`` (scoring + selection + gather)."""
    from benchmarks.engines import _press_options, compression_ratio
    from benchmarks.kvpress_runner import prefill_with_presses

    job = (spec.method, compression_ratio(budget), _press_options(spec, item))
    hooks, forwards = [], []
    for _ in range(repeats):
        shared = prefill_with_presses(lm.model, [job], item.encoded.context_ids)
        hooks.append(shared.hook_s[job[:2]])
        forwards.append(shared.prefill_s)
    return {"length": item.length, "n_context": item.encoded.n_context, "policy": spec.label, "base": "",
            "budget": budget, "repeats": repeats, "policy_s": statistics.median(hooks), "policy_s_min": min(hooks),
            "policy_s_max": max(hooks), "prefill_s": statistics.median(forwards), "score_s": NAN, "select_s": NAN,
            "crush_s": NAN, "decode_s": NAN, "decode_tokens": 0, "e2e_s": NAN,
            **{name: NAN for name in OVERHEAD_FIELDS}}


def _measure_length(lm, item: Item, specs: list[PolicySpec], budget: float, repeats: int, seed: int,
                    bar) -> list[dict[str, Any]]:
    """Median timings of the full cache and every spec on one prompt, after one discarded full run."""
    warm = ItemRuns(lm, item, seed)
    warm.full()  # warm-up at this length
    warm.close()
    bar.update(1)
    measured: dict[str, list[dict[str, float]]] = {"full": []}
    measured.update({spec.label: [] for spec in specs})
    for _ in range(repeats):
        runs = ItemRuns(lm, item, seed)  # one prefill serves the full cache, every spec and every base
        measured["full"].append(_times(runs.full()))
        bar.update(1)
        for spec in specs:
            outcome = runs.run(spec, budget)
            base = runs.run_base(spec, budget) if spec.is_kvcrush else None  # after: reuses KVCrush's scores
            measured[spec.label].append(_times(outcome, base))
            bar.update(1)
        runs.close()
    full_e2e = statistics.median(run["e2e_s"] for run in measured["full"])
    rows = []
    for label, spec in [("full", None), *((spec.label, spec) for spec in specs)]:
        median = {key: statistics.median(run[key] for run in measured[label]) for key in measured[label][0]}
        spread = {f"{key}_{name}": fn(run[key] for run in measured[label])
                  for key in SPREAD_FIELDS for name, fn in (("min", min), ("max", max))}
        e2e = median["e2e_s"]
        rows.append({
            "length": item.length, "n_context": item.encoded.n_context, "policy": label,
            "base": spec.base if spec else "", "budget": budget if spec else 1.0, "repeats": repeats,
            **median, **spread,
            "decode_ms_per_token": 1000 * median["decode_s"] / median["decode_tokens"]
            if median["decode_tokens"] else NAN,
            "score_pct": 100 * median["score_s"] / e2e if e2e else NAN,
            "select_pct": 100 * median["select_s"] / e2e if e2e else NAN,
            "full_e2e_s": full_e2e,
        })
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser("overhead", __doc__, lengths=[1024, 2048, 4096], repeats=5, budget=0.25,
                           policies=["snapkv", "h2o", "kvcrush:snapkv:alternating", "kvcrush:h2o:alternating",
                                     "kvpress:snapkv"], model=None, out=OUT)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.overhead`: the overhead table alone (what `benchmarks.run --standard` measures)."""
    args = start(build_parser(), argv)  # keeps freed memory: timings without page faults (benchmarks/env.py)
    from benchmarks.env import environment
    from benchmarks.grid import parse_policies
    from kvcrush import load_model

    began = time.perf_counter()
    lm = load_model(args.model)
    rows = measure_overhead(lm, args.lengths, parse_policies(args.policies), args.budget, args.repeats, seed=0)
    text = overhead_markdown(rows)
    write_outputs(args.out, "overhead", rows, {"rows": rows, "settings": settings_dict(args),
                                               "environment": environment(lm), "wall_s": time.perf_counter() - began},
                  text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
