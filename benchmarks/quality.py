"""The quality grid: every item x (full reference + every policy at every budget), one record per run.

For each item our engine prefills once (`engines.ItemRuns`, one more prefill only for query-aware
runs): the full-cache reference and every one of our policies at every budget are served from that
prefill; each kvpress press run prefills under its own hooks. Every run gets the same token ids, and the
task scores it against the gold answer and against the full run. The first
needle item (or the first item of any task that decodes) is also the *parity* item: for every
kvpress press that has a counterpart among our policies (``grid.PARITY_PAIRS``), the kept token
sets of both engines are compared there (mean Jaccard over layers and KV heads).

`run_item` runs one item and is the only code that does: `run_grid` calls it item after item in this
process, `benchmarks.distributed` on Ray workers. With an `ItemStore` (``OUT/items/``, what
`benchmarks.run` uses) every finished item is written at once and a rerun into the same folder skips
the items already there, whichever of the two ran them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.engines import ItemRuns, kept_jaccard, kvpress_kept
from benchmarks.grid import ENGINE_KVPRESS, FULL_BITS, PARITY_PAIRS, PolicySpec
from benchmarks.outcome import Outcome
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


def progress_bar(total: int, enabled: bool) -> Any:
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


@dataclass
class ItemResult:
    """Everything one grid item produced: its records (the full reference first), the runs that failed, and
    the kept-token parity rows when it is the parity item. `index` is its place in the grid's item list."""

    index: int
    key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    produced: dict[str, Any] = field(default_factory=dict)  # who ran it and how long it took (not compared)


def item_key(item: Item) -> str:
    """An item's identity in a grid (and in a resumed run's item files): task, dataset and sample name."""
    return f"{item.task}|{item.dataset}|{item.sample}"


def item_runs(item: Item, specs: list[PolicySpec], budgets: list[float]) -> int:
    """How many runs an item makes: the full reference and every spec that applies at every budget."""
    return 1 + len(item_specs(item, specs)) * len(budgets)


def parity_counterparts(items: list[Item], specs: list[PolicySpec], parity: bool = True,
                        ) -> tuple[int | None, dict[str, list[str]]]:
    """The index of the parity item in `items` (None without one) and which of our specs each kvpress press
    is compared with there."""
    check = parity_item(items) if parity else None
    counterparts = _parity_counterparts(specs) if check is not None else {}
    if check is None or not counterparts:
        return None, {}
    return next(i for i, item in enumerate(items) if item is check), counterparts


class _NoBar:
    """Stands in for the progress bar where nothing is shown (a distributed worker)."""

    def set_postfix_str(self, text: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def run_item(
    lm,
    item: Item,
    specs: list[PolicySpec],
    budgets: list[float],
    seed: int,
    query_aware: bool = False,
    counterparts: dict[str, list[str]] | None = None,
    index: int = 0,
    bar: Any = None,
    log: Callable[[str], None] = print,
) -> ItemResult:
    """One item of the grid: the full reference, then every spec at every budget (a failing run is recorded in
    `errors` and printed, never silently dropped). With `counterparts` (the parity item only) the kept token
    sets of our policies and their kvpress presses are compared on it too.

    This is the one place a grid item runs: `run_grid` calls it in order in this process,
    `benchmarks.distributed` on Ray workers, so both give the same records.
    """
    bar = bar if bar is not None else _NoBar()
    started = time.perf_counter()
    result = ItemResult(index, item_key(item))
    wanted = {label for mine in (counterparts or {}).values() for label in mine}
    our_kept: dict[tuple[str, float], list] = {}
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
            keep = spec.label in wanted
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
    if counterparts:
        result.parity = _parity(lm, item, specs, budgets, counterparts, our_kept, log)
    result.produced = {"worker": f"{socket.gethostname()}:{os.getpid()}", "seconds": time.perf_counter() - started}
    return result


def merge(results: Iterable[ItemResult]) -> GridResult:
    """Item results, in item order, as one `GridResult` (what the report reads)."""
    grid = GridResult()
    for result in sorted(results, key=lambda r: r.index):
        grid.records.extend(result.records)
        grid.errors.extend(result.errors)
        grid.parity.extend(result.parity)
    return grid


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
    store: ItemStore | None = None,
) -> GridResult:
    """Run every item in this process (`run_item`). With a `store`, each finished item is written to it at
    once, items it already holds are skipped (a rerun resumes), and the result is read back from it."""
    budgets = list(budgets)
    check, counterparts = parity_counterparts(items, specs, parity)
    pending = store.pending(items) if store is not None else list(range(len(items)))
    done: list[ItemResult] = []
    bar = progress_bar(sum(item_runs(items[i], specs, budgets) for i in pending), show_progress)
    try:
        for index in pending:
            result = run_item(lm, items[index], specs, budgets, seed, query_aware,
                              counterparts if index == check else None, index, bar, log)
            if store is not None:
                store.write(result)
            else:
                done.append(result)
    finally:
        bar.close()
    return store.load(items) if store is not None else merge(done)


# ---------------------------------------------------------------------------------------------
# Resuming: one JSON file per finished item


class GridMismatch(ValueError):
    """An output folder holds items of a different grid than the one asked for."""


class ItemStore:
    """Finished grid items under ``OUT/items/``, one JSON file each, written as soon as the item finishes.

    ``items/grid.json`` names the grid (model, seed, budgets, policies, query mode and every item's key,
    `grid_fingerprint`); a rerun with the same output folder and the same grid skips the items already
    there, a different grid is refused (`GridMismatch`) rather than mixed in. Files are written to a
    temporary name and renamed, so an interrupted run leaves only whole items. Floats survive the JSON
    round trip exactly (Python writes the shortest repr that reads back the same double).
    """

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(out) / "items"
        self.fingerprint = fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        grid_file = self.folder / "grid.json"
        if grid_file.is_file():
            found = json.loads(grid_file.read_text())
            if found != fingerprint:
                differs = sorted(k for k in {*found, *fingerprint} if found.get(k) != fingerprint.get(k))
                raise GridMismatch(
                    f"{self.folder} holds items of a different grid (differs in: {', '.join(differs)}); "
                    "rerun with the same options to resume it, or choose another --out (or delete that folder)."
                )
        else:
            _write_json(grid_file, fingerprint)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.json"

    def finished(self, items: list[Item]) -> list[int]:
        """Indices of the items already written."""
        return [i for i in range(len(items)) if self.path(i).is_file()]

    def pending(self, items: list[Item]) -> list[int]:
        """Indices of the items still to run, in order."""
        return [i for i in range(len(items)) if not self.path(i).is_file()]

    def write(self, result: ItemResult) -> None:
        _write_json(self.path(result.index), dataclasses.asdict(result))

    def read(self, index: int) -> ItemResult:
        return ItemResult(**json.loads(self.path(index).read_text()))

    def load(self, items: list[Item]) -> GridResult:
        """Every item's result, in item order; an item missing is an error (the grid has not finished)."""
        missing = self.pending(items)
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(items)} items are not in {self.folder} "
                                    f"(first: {item_key(items[missing[0]])}); rerun the same command to finish.")
        results = [self.read(i) for i in range(len(items))]
        for i, result in enumerate(results):
            if result.key != item_key(items[i]):
                raise GridMismatch(f"{self.path(i)} holds {result.key!r}, expected {item_key(items[i])!r}.")
        return merge(results)


def grid_fingerprint(model: str | None, device: str | None, dtype: str | None, items: list[Item],
                     specs: list[PolicySpec], budgets: Iterable[float], seed: int, query_aware: bool,
                     parity: bool) -> dict[str, Any]:
    """What a grid's records depend on, as plain JSON (the `ItemStore` compares it on a rerun): every spec with
    its options (``--window`` changes SnapKV's options, not its label) and every item's key with a digest of
    its token ids, gold and decoding settings (``--new-tokens`` changes the items, not their names)."""
    return {"model": model, "device": device, "dtype": dtype, "seed": seed, "query_aware": query_aware,
            "parity": parity, "budgets": list(budgets),
            "policies": [json.loads(json.dumps(dataclasses.asdict(spec), default=str)) for spec in specs],
            "items": [f"{item_key(item)}@{item_digest(item)}" for item in items]}


def item_digest(item: Item) -> str:
    """A short digest of everything an item's runs read (token ids, gold, decoding settings, metadata)."""
    content = {"encoded": [item.encoded.context_ids, item.encoded.question_ids, item.encoded.suffix_ids],
               "answers": list(item.answers), "reference_ids": item.reference_ids,
               "max_new_tokens": item.max_new_tokens, "stop_at_newline": item.stop_at_newline, "meta": item.meta}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """numpy / torch scalars as Python numbers for JSON (`.item()` keeps the exact value)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, default=_plain))
    os.replace(temporary, path)


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


__all__ = ["GridResult", "ItemResult", "ItemStore", "GridMismatch", "run_grid", "run_item", "merge", "build_items",
           "grid_fingerprint", "item_key", "parity_item", "parity_counterparts", "warm_up", "TASK_MODULES"]
