"""What `benchmarks.gpu_check` measures and asserts for one prompt and one policy, and its CPU-vs-device parity.

Everything here runs the real engine (`kvcrush.prepare_encoded`, `PreparedPrompt.select` / `generate`) on a
random-weight model; nothing is mocked. One row per (prompt length, policy):

- timings from the engine's own `Timings` (each synchronised on CUDA): the first select (scoring included
  unless an earlier policy with the same scorer computed it), the median of `repeats` cached selects, the same
  for a KVCrush policy's base (exactly the `base` inside it, on the same cached scores), and the decode time per
  token of a greedy answer decoded from that selection;
- peak memory (`torch.cuda.max_memory_allocated`) above what was allocated when the step began, beside
  `kvcrush.limits.estimate_run_memory` for the same run, computed before it (so a scorer not yet run counts);
- host syncs (`counting_syncs`) in the first select, in one cached select and in the answer;
- checks: kept indices `[kv_heads, T]` per layer (in range, ascending, `T` within the layer's budget), KV
  bytes before and after equal to what the kept rows hold, finite scores and logits (the teacher-forced NLL of
  random reference tokens after the compressed prompt), and answer ids inside the vocabulary.

The parity check (`parity_rows`) runs one model on the CPU and on the device, both in float32 on the same
token ids. Scores are compared with a tolerance (kernels differ in their last bits); then the device's cached
scores are overwritten in place with the CPU's, so the kept sets compared exactly are the device's selection
code on identical inputs (random weights make attention nearly uniform: two independently computed scores
near a budget's threshold swap places on float rounding alone, which says nothing about the code). Greedy
tokens are compared exactly for a few policies (`PARITY_GENERATE`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib
import math
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kvcrush import LoadedModel, Policy, PreparedPrompt, make_policy
from kvcrush.crush import ANCHOR_MODES
from kvcrush.limits import estimate_run_memory
from kvcrush.policies import BASE_CHOICES, BASELINES, KVCrush
from kvcrush.prompts import EncodedPrompt
from kvcrush.trace import RunTrace

GIB = 1024**3
QUESTION_TOKENS = 16  # appended uncompressed after eviction, as a question would be
REFERENCE_TOKENS = 16  # teacher-forced after the compressed prompt: their NLL is finite or the logits are not
FIRST_ORDINARY_ID = 3  # ids 0-2 are the tokenizer's special tokens
PARITY_SCORE_RTOL = 1e-3  # of each layer's largest |score|: float32 kernels on two devices, not the algorithm
# Greedy answers compared across devices: the full cache, both scorers that recompute attention (H2O over every
# query, SnapKV over the window), the paper's KVCrush at token and block level, and quantized storage.
PARITY_GENERATE = ("full", "snapkv", "h2o", "kvcrush:snapkv:alternating", "kvcrush:snapkv:alternating:block16",
                   "snapkv~4")
SYNC_WARNING = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") says


def policy_specs() -> dict[str, tuple[str, dict[str, Any]]]:
    """Label -> (policy name, options): every built-in policy, KVCrush over every base, with every anchor, and each
    of its options beyond the paper, plus storage, decode-time eviction and head reduction.

    Labels follow `benchmarks.grid` where it has a name for the configuration (``kvcrush:snapkv:alternating:best``,
    ``snapkv~4``, ``snapkv@all``); ``block16``, ``kvheads`` and ``/decode8`` are this table's own.
    """
    specs: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in BASELINES}
    for base in BASE_CHOICES:
        specs[f"kvcrush:{base}:alternating"] = ("kvcrush", {"base": base, "anchor": "alternating"})
    for anchor in ANCHOR_MODES:
        specs.setdefault(f"kvcrush:snapkv:{anchor}", ("kvcrush", {"base": "snapkv", "anchor": anchor}))
    paper = {"base": "snapkv", "anchor": "alternating"}
    variants = {
        "block16": {"granularity": "block", "block_size": 16},
        "kvheads": {"signature_heads": "kv"},
        "best": {"representative": "best"},
        "adaptive": {"split": "adaptive"},
        "anchors4": {"anchors": 4, "anchor_mode": "fixed"},
        "kmeans4": {"anchors": 4, "anchor_mode": "kmeans"},
        "merge": {"merge": "values"},
        "rep4": {"representative_bits": 4},
    }
    for variant, options in variants.items():
        specs[f"kvcrush:snapkv:alternating:{variant}"] = ("kvcrush", {**paper, **options})
    specs["snapkv~4"] = ("snapkv", {"kv_bits": 4})
    specs["kvcrush:snapkv:alternating~4"] = ("kvcrush", {**paper, "kv_bits": 4})
    specs["snapkv/decode8"] = ("snapkv", {"decode_interval": 8})
    specs["kvcrush:snapkv:alternating/decode8"] = ("kvcrush", {**paper, "decode_interval": 8})
    specs["snapkv@all"] = ("snapkv", {"head_reduction": "all"})
    specs["kvcrush:snapkv:alternating@all"] = ("kvcrush", {**paper, "head_reduction": "all"})
    return specs


def build_policies(labels: list[str] | None, budget: float, seed: int) -> dict[str, Policy]:
    """The policies of `policy_specs` at `budget` (all, or the given labels in their order)."""
    specs = policy_specs()
    chosen = labels or list(specs)
    unknown = [label for label in chosen if label not in specs]
    if unknown:
        raise ValueError(f"Unknown policy label(s) {', '.join(unknown)}; choose from {', '.join(specs)}.")
    policies = {}
    for label in chosen:
        name, options = specs[label]
        policies[label] = make_policy(name, budget=budget, **({"seed": seed} | options))
    return policies


def prompt_vocab(lm: LoadedModel) -> int:
    """Prompt ids stay below this: ids the tokenizer has and the model embeds (Llama-3's 128256 rows, the packaged
    tokenizer's 49152 tokens)."""
    return min(int(lm.config.vocab_size), int(lm.tokenizer.vocab_size))


def random_prompt(n_tokens: int, vocab: int, seed: int, question_tokens: int = QUESTION_TOKENS) -> EncodedPrompt:
    """`n_tokens` of context and a `question_tokens` question, uniform over the ids from `FIRST_ORDINARY_ID` to
    below `vocab` (random weights make any text as good as any other, and no data set has to travel with the
    tree)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_ORDINARY_ID, vocab, (n_tokens + question_tokens,), generator=generator).tolist()
    return EncodedPrompt(ids[:n_tokens], ids[n_tokens:])


def reference_ids(vocab: int, seed: int, n: int = REFERENCE_TOKENS) -> list[int]:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(FIRST_ORDINARY_ID, vocab, (n,), generator=generator).tolist()


# --- host syncs ------------------------------------------------------------------------------------


@dataclass
class SyncCount:
    """Host syncs counted inside one `counting_syncs` block (None where they cannot be counted)."""

    value: int | None = None


def _cpu_counter() -> type | None:
    """`kvcrush.syncs.HostSyncCounter` (counts the calls that would sync on a GPU) where it exists."""
    try:
        return importlib.import_module("kvcrush.syncs").HostSyncCounter
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def counting_syncs(device: torch.device) -> Iterator[SyncCount]:
    """Count the host syncs of the block: on CUDA the warnings of `torch.cuda.set_sync_debug_mode("warn")`, one per
    operation that makes the host wait for the device (`.item()`, `.cpu()`, `nonzero`, boolean-mask indexing, ...;
    the explicit `torch.cuda.synchronize` around the engine's timings is not flagged by that mode); on the CPU the
    calls `kvcrush.syncs.HostSyncCounter` counts, where that module exists. Other warnings are passed on."""
    count = SyncCount()
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode("default")
        count.value = sum(SYNC_WARNING in str(w.message) for w in caught)
        for w in caught:
            if SYNC_WARNING not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return
    counter_cls = _cpu_counter()
    if counter_cls is None:
        yield count
        return
    with counter_cls() as counter:
        yield count
    count.value = int(counter.count)


# --- memory ----------------------------------------------------------------------------------------


@dataclass
class MemoryWindow:
    """Peak device memory of a step: absolute, and above what was allocated when it began (bytes; None on CPU)."""

    start: int | None = None
    peak: int | None = None

    @property
    def above_start(self) -> int | None:
        return None if self.peak is None or self.start is None else self.peak - self.start


@contextlib.contextmanager
def measuring_memory(device: torch.device) -> Iterator[MemoryWindow]:
    window = MemoryWindow()
    if device.type != "cuda":
        yield window
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    window.start = int(torch.cuda.memory_allocated(device))
    yield window
    torch.cuda.synchronize(device)
    window.peak = int(torch.cuda.max_memory_allocated(device))


def release(device: torch.device) -> None:
    """Free what a failed or finished step left (an out-of-memory error leaves cached blocks behind)."""
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError):  # after a device-side assert the context is gone: record and go on
            torch.cuda.empty_cache()


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / GIB, 3)


# --- checks ----------------------------------------------------------------------------------------


def kept_problems(trace: RunTrace, kv_heads: int) -> list[str]:
    """What is wrong with each layer's kept indices `[kv_heads, T]`: shape, range, order, size against the budget.

    Token granularity keeps exactly the layer's budget `T`; block granularity at most `T` (whole blocks).
    """
    problems = []
    for layer in trace.layers:
        kept = layer.kept.to("cpu")
        where = f"layer {layer.layer}"
        if kept.dim() != 2 or kept.shape[0] != kv_heads:
            problems.append(f"{where}: kept shape {tuple(kept.shape)}, want [{kv_heads}, T]")
            continue
        size = kept.shape[1]
        if size < 1 or size > layer.n_tokens:
            problems.append(f"{where}: keeps {size} of {layer.n_tokens} tokens")
        elif int(kept.min()) < 0 or int(kept.max()) >= layer.n_tokens:
            problems.append(f"{where}: kept indices outside [0, {layer.n_tokens})")
        elif size > 1 and not bool((kept[:, 1:] > kept[:, :-1]).all()):
            problems.append(f"{where}: kept indices not strictly ascending per head")
        if not layer.no_op:
            exact = layer.granularity == "token"
            if size > layer.budget or (exact and size != layer.budget):
                problems.append(f"{where}: keeps {size} tokens per head, budget {layer.budget}")
    return problems


def byte_problems(trace: RunTrace, bytes_before: int, bytes_after: int, n_tokens: int, bytes_per_token: int,
                  n_layers: int, quantized: bool) -> list[str]:
    """KV bytes against the kept rows: before = every prompt row; after = the kept rows at the model's dtype
    (quantized storage: no more than that; equal where every quantized row sits in the full-precision residual
    window, as 4-bit representatives of a short prompt can)."""
    problems = []
    if bytes_before != n_tokens * bytes_per_token:
        problems.append(f"bytes before {bytes_before}, want {n_tokens} tokens x {bytes_per_token}")
    row_bytes = bytes_per_token // n_layers  # one token of one layer, K and V of every KV head
    expected = sum(int(layer.kept.shape[1]) * row_bytes for layer in trace.layers)
    if quantized:
        if not 0 < bytes_after <= expected:
            problems.append(f"bytes after {bytes_after}, want at most the {expected} of full-precision rows")
    elif bytes_after != expected:
        problems.append(f"bytes after {bytes_after}, want {expected} (the kept rows)")
    return problems


def scores_finite(trace: RunTrace) -> bool:
    return all(layer.scores is None or bool(torch.isfinite(layer.scores).all()) for layer in trace.layers)


def _median_select_s(prepared: PreparedPrompt, policy: Policy, repeats: int) -> float:
    return statistics.median(prepared.select(policy).timings.select_s for _ in range(max(1, repeats)))


def measure_policy(prepared: PreparedPrompt, label: str, policy: Policy, new_tokens: int, repeats: int,
                   reference: list[int]) -> dict[str, Any]:
    """One policy on one prepared prompt: timings, memory, syncs and checks (see the module docstring)."""
    lm = prepared.lm
    device = lm.device
    n_positions = len(prepared.encoded.all_ids)
    estimate = estimate_run_memory(lm, n_positions, new_tokens, policy=policy, prepared=prepared)
    prefills = prepared.prefills
    with measuring_memory(device) as memory:
        with counting_syncs(device) as first_syncs:
            first = prepared.select(policy).timings
        select_s = _median_select_s(prepared, policy, repeats)
        with counting_syncs(device) as select_syncs:
            trace = prepared.select(policy)
        base_s = _median_select_s(prepared, policy.base, repeats) if isinstance(policy, KVCrush) else None
        with counting_syncs(device) as generate_syncs:
            result = prepared.generate(policy, new_tokens, selection=trace)
    scored = prepared.generate(policy, 0, reference_ids=reference, selection=trace)

    timings = result.timings
    problems = kept_problems(trace, lm.kv_heads)
    problems += byte_problems(trace, result.kv_bytes_before, result.kv_bytes_after, prepared.n_budgeted,
                              lm.kv_bytes_per_token(), lm.n_layers, policy.storage().quantized)
    if not scores_finite(trace):
        problems.append("non-finite scores")
    nll = scored.reference_nll
    if nll is None or not math.isfinite(nll):
        problems.append(f"reference NLL {nll} (non-finite logits)")
    vocab = int(lm.config.vocab_size)
    if not result.new_token_ids or not all(0 <= i < vocab for i in result.new_token_ids):
        problems.append(f"answer ids {result.new_token_ids[:4]}... empty or outside the vocabulary")
    if memory.above_start is not None and memory.above_start > estimate.total:
        problems.append(f"peak {gib(memory.above_start)} GiB above start exceeds the estimate {gib(estimate.total)}")
    extra_s = None if base_s is None else select_s - base_s
    tokens = timings.decode_tokens
    return {
        "policy": label,
        "status": "failed" if problems else "ok",
        "score_ms": 1000 * first.score_s,
        "score_shared": bool(first.score_reused),
        "extra_prefills": prepared.prefills - prefills,
        "first_select_ms": 1000 * first.select_s,
        "select_ms": 1000 * select_s,
        "base_select_ms": None if base_s is None else 1000 * base_s,
        "kvcrush_extra_ms": None if extra_s is None else 1000 * extra_s,
        "kvcrush_extra_pct": None if extra_s is None else 100 * extra_s / prepared.prefill_s,
        "decode_ms_per_token": 1000 * timings.decode_s / tokens if tokens else None,
        "decode_tokens": tokens,
        "kv_bytes_before": result.kv_bytes_before,
        "kv_bytes_after": result.kv_bytes_after,
        "kv_ratio": result.kv_bytes_after / result.kv_bytes_before if result.kv_bytes_before else None,
        "peak_gib": gib(memory.peak),
        "peak_above_start_gib": gib(memory.above_start),
        "estimate_gib": gib(estimate.total),
        "first_select_syncs": first_syncs.value,
        "select_syncs": select_syncs.value,
        "generate_syncs": generate_syncs.value,
        "syncs_per_token": None if generate_syncs.value is None or not tokens else generate_syncs.value / tokens,
        "reference_nll": nll,
        "problems": "; ".join(problems),
    }


# --- CPU versus device -----------------------------------------------------------------------------


def cpu_copy(lm: LoadedModel) -> LoadedModel:
    """The same weights on the CPU, in float32 (a second model; `lm` stays where it is)."""
    model = copy.deepcopy(lm.model).to(device="cpu", dtype=torch.float32)
    return LoadedModel(model, lm.tokenizer, lm.name, torch.device("cpu"), torch.float32)


def max_relative_difference(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """Largest |reference - other| over every layer, each layer's difference relative to its largest |reference|."""
    worst = 0.0
    for ref, oth in zip(reference, other, strict=True):
        ref, oth = ref.to("cpu", torch.float64), oth.to("cpu", torch.float64)
        if ref.shape != oth.shape:
            return float("inf")
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((ref - oth).abs().max()) / scale)
    return worst


def kept_equal(reference: RunTrace, other: RunTrace) -> bool:
    return len(reference.layers) == len(other.layers) and all(
        torch.equal(a.kept.to("cpu"), b.kept.to("cpu")) for a, b in zip(reference.layers, other.layers, strict=True))


def parity_rows(target: LoadedModel, encoded: EncodedPrompt, policies: dict[str, Policy], new_tokens: int,
                generate: tuple[str, ...] = PARITY_GENERATE) -> list[dict[str, Any]]:
    """Each policy on `target` (a float32 model on the device) against the same weights on the CPU."""
    from kvcrush import prepare_encoded

    reference_lm = cpu_copy(target)
    sides = {"cpu": prepare_encoded(reference_lm, encoded), "device": prepare_encoded(target, encoded)}
    rows = []
    score_diffs: dict[tuple, float] = {}
    for label, policy in policies.items():
        started = time.perf_counter()
        row: dict[str, Any] = {"policy": label, "scores_max_rel_diff": None, "kept_equal": None,
                               "tokens_equal": None, "cpu_tokens": "", "device_tokens": "", "error": ""}
        try:
            if policy.evicts:
                key = policy.scorer_key()
                cpu_scores, _ = sides["cpu"].scores(policy)
                device_scores, _ = sides["device"].scores(policy)
                if key not in score_diffs:
                    score_diffs[key] = max_relative_difference(cpu_scores, device_scores)
                    for mine, theirs in zip(device_scores, cpu_scores, strict=True):
                        mine.copy_(theirs)  # identical inputs for the device's selection (module docstring)
                row["scores_max_rel_diff"] = score_diffs[key]
            traces = {side: prepared.select(policy) for side, prepared in sides.items()}
            row["kept_equal"] = kept_equal(traces["cpu"], traces["device"])
            if label in generate:
                ids = {side: prepared.generate(policy, new_tokens, selection=traces[side]).new_token_ids
                       for side, prepared in sides.items()}
                row["tokens_equal"] = ids["cpu"] == ids["device"]
                row["cpu_tokens"], row["device_tokens"] = (" ".join(map(str, ids[s])) for s in ("cpu", "device"))
        except Exception as error:  # recorded in the table; the next policy still runs
            row["error"] = f"{type(error).__name__}: {error}"
            release(target.device)
        diff = row["scores_max_rel_diff"]
        row["status"] = "ok" if (not row["error"] and row["kept_equal"] and row["tokens_equal"] is not False
                                 and (diff is None or diff <= PARITY_SCORE_RTOL)) else "failed"
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
    del sides, reference_lm
    release(target.device)
    return rows
