"""The quality grid: every item x (full reference + every policy at every budget), one record per run.

For each item our engine prefills once (`engines.ItemRuns`, one more prefill only for query-aware
runs): the full-cache reference and every one of our policies at every budget are served from that
prefill; each kvpress press run prefills under its own hooks. Every run gets the same token ids, and the
task scores it against the gold answer and against the full run. The first
needle item (or the first item of any task that decodes) is also the *parity* item: for every
kvpress press that has a counterpart among our policies (``grid.PARITY_PAIRS``), the kept token
sets of both engines are compared there (mean Jaccard over layers and KV heads).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.engines import ItemRuns, Outcome, kept_jaccard, kvpress_kept
from benchmarks.grid import ENGINE_KVPRESS, FULL_BITS, PARITY_PAIRS, PolicySpec
from benchmarks.tasks import Item, agreement, likelihood, multikey, multivalue, needle

TASK_MODULES = {module.NAME: module for module in (needle, multikey, multivalue, likelihood, agreement)}


@dataclass
class GridResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _base_record(item: Item, spec: PolicySpec | None, budget: float) -> dict[str, Any]:
    return {
        "task": item.task, "dataset": item.dataset, "length": item.length, "sample": item.sample,
        "n_context": item.encoded.n_context, "n_tail": len(item.encoded.tail_ids),
        "policy": spec.label if spec else "full", "engine": spec.engine if spec else "ours",
        "method": spec.method if spec else "full", "base": spec.base if spec else "",
        "anchor": spec.anchor if spec else "", "budget": budget,
        # storage (kvpress and the full reference: the model's dtype); representative_bits: KVCrush only
        "kv_bits": spec.kv_bits if spec else FULL_BITS, "equal_bytes": spec.equal_bytes if spec else False,
        "representative_bits": spec.representative_bits if spec else None,
    }


def _record(item: Item, spec: PolicySpec | None, budget: float, outcome: Outcome, full: Outcome) -> dict[str, Any]:
    module = TASK_MODULES[item.task]
    record = _base_record(item, spec, budget)
    metrics = module.score(item, outcome, full)
    record.update(metrics)
    if "format" in item.meta:
        record["format"] = item.meta["format"]
    if "depth" in item.meta:
        record["depth"] = item.meta["depth"]
    record.update(
        score=metrics[module.PRIMARY], score_name=module.PRIMARY, higher_is_better=module.HIGHER_IS_BETTER,
        kv_fraction=outcome.kv_fraction, kv_bytes_before=outcome.kv_bytes_before,
        kv_bytes_after=outcome.kv_bytes_after, kept_tokens=outcome.kept_tokens, budget_bytes=outcome.budget_bytes,
        prefill_s=outcome.prefill_s, score_s=outcome.score_s,
        select_s=outcome.select_s, crush_s=outcome.crush_s, decode_s=outcome.decode_s,
        decode_tokens=outcome.decode_tokens, decode_ms_per_token=outcome.decode_ms_per_token,
        prefill_reused=outcome.prefill_reused, score_reused=outcome.score_reused, text=outcome.text,
    )
    return record


def item_specs(item: Item, specs: list[PolicySpec]) -> list[PolicySpec]:
    """The specs that apply to an item: query-aware (`+qa`) ones only where there is a question."""
    return [spec for spec in specs if not spec.query_aware or item.encoded.question_ids]


def parity_item(items: list[Item]) -> Item | None:
    """The first needle item, else the first item that decodes."""
    for item in items:
        if item.task == needle.NAME:
            return item
    return next((item for item in items if not item.reference_ids), None)


def _parity_counterparts(specs: list[PolicySpec]) -> dict[str, list[str]]:
    labels = {spec.label for spec in specs}
    return {press: [ours for ours in mine if ours in labels]
            for press, mine in PARITY_PAIRS.items() if press in labels and any(ours in labels for ours in mine)}


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # ships with transformers

    return tqdm(total=total, disable=not enabled, file=sys.stderr, dynamic_ncols=True, unit="run")


def warm_up(lm, items: list[Item], specs: list[PolicySpec], budget: float, seed: int) -> None:
    """One discarded run per engine: the first forward of a process is several times slower."""
    item = min(items, key=lambda i: i.encoded.n_context)
    short = Item(item.task, item.dataset, item.length, "warm-up", item.encoded, item.answers, item.reference_ids,
                 min(item.max_new_tokens, 2))
    runs = ItemRuns(lm, short, seed)
    runs.full()
    for engine in ("ours", ENGINE_KVPRESS):
        spec = next((s for s in specs if s.engine == engine), None)
        if spec is not None:
            runs.run(spec, budget)
    runs.close()


def run_grid(
    lm,
    items: list[Item],
    specs: list[PolicySpec],
    budgets: Iterable[float],
    seed: int,
    query_aware: bool = False,
    show_progress: bool = True,
    parity: bool = True,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Run everything; a failing run is recorded in `errors` (and printed), never silently dropped."""
    budgets = list(budgets)
    result = GridResult()
    check = parity_item(items) if parity else None
    counterparts = _parity_counterparts(specs) if check is not None else {}
    our_kept: dict[tuple[str, float], list] = {}
    wanted = {label for mine in counterparts.values() for label in mine}
    bar = _progress(sum(1 + len(item_specs(item, specs)) * len(budgets) for item in items), show_progress)
    try:
        for item in items:
            specs_here = item_specs(item, specs)
            bar.set_postfix_str(f"{item.task} {item.sample[:32]} full")
            runs = ItemRuns(lm, item, seed)  # our engine: one prefill for the reference and every policy x budget
            full = runs.full()
            result.records.append(_record(item, None, 1.0, full, full))
            bar.update(1)
            runs.run_ours_batch(specs_here, budgets, query_aware)  # ours in batches (scoring and answering)
            try:  # every kvpress press x budget from one shared prefill per query mode
                runs.run_kvpress_batch([s for s in specs_here if s.engine == ENGINE_KVPRESS], budgets)
            except Exception as error:  # noqa: BLE001 - fall back to one prefill per press run
                log(f"  ! shared kvpress prefill on {item.sample}: {error!r}; running presses one by one")
            for budget in budgets:
                for spec in specs_here:
                    bar.set_postfix_str(f"{item.task} {item.sample[:24]} {spec.label} {budget:.0%}")
                    keep = item is check and spec.label in wanted
                    try:
                        outcome = runs.run(spec, budget, query_aware, keep_kept=keep)
                    except Exception as error:  # noqa: BLE001 - one failing press must not end the grid
                        result.errors.append({**_base_record(item, spec, budget), "error": repr(error)})
                        log(f"  ! {spec.label} at {budget:.0%} on {item.sample}: {error!r}")
                        bar.update(1)
                        continue
                    if keep and outcome.kept is not None:
                        our_kept[(spec.label, budget)] = outcome.kept
                    result.records.append(_record(item, spec, budget, outcome, full))
                    bar.update(1)
            runs.close()
    finally:
        bar.close()
    if check is not None and counterparts:
        result.parity = _parity(lm, check, specs, budgets, counterparts, our_kept, log)
    return result


def _parity(lm, item: Item, specs: list[PolicySpec], budgets: list[float], counterparts: dict[str, list[str]],
            our_kept: dict, log: Callable[[str], None]) -> list[dict[str, Any]]:
    by_label = {spec.label: spec for spec in specs}
    rows = []
    for budget in budgets:
        for press, mine in counterparts.items():
            try:
                theirs = kvpress_kept(lm, by_label[press], budget, item)
            except Exception as error:  # noqa: BLE001
                log(f"  ! parity {press} at {budget:.0%}: {error!r}")
                continue
            kept_theirs = sum(int(k.shape[-1]) for k in theirs) / max(len(theirs), 1)
            for label in mine:
                ours = our_kept.get((label, budget))
                if ours is None:
                    continue
                kept_ours = sum(int(k.shape[-1]) for k in ours) / max(len(ours), 1)
                rows.append({
                    "sample": item.sample, "n_context": item.encoded.n_context, "budget": budget,
                    "ours": label, "kvpress": press, "jaccard": kept_jaccard(ours, theirs),
                    "kept_tokens_ours": kept_ours, "kept_tokens_kvpress": kept_theirs,
                })
    return rows


def build_items(tokenizer, task_names: Iterable[str], settings: dict[str, Any]) -> list[Item]:
    """Items of every requested task (`settings[task]` is that task's settings object)."""
    items: list[Item] = []
    for name in task_names:
        if name not in TASK_MODULES:
            raise ValueError(f"Unknown task {name!r}; choose from {', '.join(TASK_MODULES)}.")
        items.extend(TASK_MODULES[name].build(tokenizer, settings[name]))
    return items


__all__ = ["GridResult", "run_grid", "build_items", "parity_item", "warm_up", "TASK_MODULES"]
