"""Run NVIDIA kvpress presses on a Hugging Face causal LM, for benchmarking against our own engine.

kvpress (https://github.com/NVIDIA/kvpress, Apache-2.0) compresses the KV cache once, at the end
of the prefill: each press registers a forward hook on every attention layer that scores the
layer's cached keys and keeps the ``compute_n_kept(N, ratio) = max(1, int(N * (1 - ratio)))``
best-scored tokens per KV head. This module drives that with plain token ids (no chat template,
no pipeline), so the benchmark can feed both engines exactly the same ids on the same model in the
same process:

1. prefill ``context_ids`` under the press into a fresh ``DynamicCache``;
2. append ``question_ids`` uncompressed, at their true positions;
3. decode greedily, or score a true continuation under teacher forcing.

Steps 2 and 3 are our engine's own loop (`kvcrush.decoding.extend`, `greedy_decode`,
`score_reference`) and KV bytes are counted by `kvcrush.kvcache.cache_bytes`, so a difference between
the engines is a difference in what the compressed cache holds, never in how it is read. After eviction
the cache is shorter than the sequence, so every later forward passes explicit ``position_ids`` (true
positions: context length + i) while ``cache_position`` is left to its default (the actual cache
length), which keeps the causal mask right. This is also what kvpress's own pipeline does.

Notes on kvpress 0.5.5 learned from its source:

- ``import kvpress`` wraps every function in transformers' ``ALL_ATTENTION_FUNCTIONS`` (a no-op
  unless a head-wise press sets ``module.masked_key_indices``); it affects every model in the
  process, including our engine's, but not its results.
- ``ObservedAttentionPress`` needs the real attention matrices ``[batch, heads, N, N]``, which only
  eager attention returns; with sdpa it fails an assertion. ``run_press`` switches the model to
  eager for that press's prefill only and restores the previous implementation afterwards (see
  ``EAGER_PRESSES``). SnapKV and TOVA also use the matrices when present, otherwise they recompute
  the window's attention from the query projection, so they run under sdpa.
- Kept keys are gathered in top-k order (highest score first), not in position order; attention
  does not care because RoPE is already applied to cached keys.
- Defaults: SnapKV ``window_size=64`` (context must be longer) and ``kernel_size=5``;
  StreamingLLM ``n_sink=4``; ExpectedAttention ``n_future_positions=512``, ``n_sink=4``; PyramidKV
  ``window_size=64``, ``beta=20``.
- ``PyramidKVPress`` overrides ``compress``: each layer keeps its own pyramid budget instead of
  ``compute_n_kept``, and falls back to SnapKV's ``round(N * (1 - ratio))`` whenever the pyramid does not
  fit (short contexts, few layers). Layers then differ in length, which `kvcrush.decoding.extend` handles.

Every press and ratio from one prefill (`prefill_with_presses`, `run_presses`): a press hook runs after
its attention layer has attended over the full keys, and no later layer reads this layer's cache, so the
prefill's hidden states never depend on the press. One forward with our own hook on every attention
layer therefore serves any number of presses: per layer it calls each press's own ``compress`` with the
arguments kvpress's ``BasePress.forward_hook`` passes and keeps the result in that press's own cache,
while the forward's cache stays uncompressed. Presses that need eager attention get a second forward.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from benchmarks.grid import KVPRESS_ENGINE_PRESSES
from benchmarks.outcome import Outcome, press_outcome
from kvcrush.attention import attention_modules, forward_hooks
from kvcrush.decoding import (
    ReferenceScores,
    extend,
    greedy_decode_batch,
    score_reference,
    score_reference_batch,
    stop_ids,
    timed_greedy_decode,
)
from kvcrush.devices import Stopwatch
from kvcrush.errors import ResourceError
from kvcrush.integrations import require_kvpress
from kvcrush.kvcache import cache_bytes, cache_lengths
from kvcrush.limits import available_memory
from kvcrush.sizes import format_bytes

# Before importing kvpress: a clear message (what is wrong, what to install) when kvpress is missing or does not
# accept the installed transformers (kvpress 0.5.5 requires transformers<5.3).
require_kvpress()

import kvpress  # noqa: E402
from kvpress import ScorerPress, SnapKVPress  # noqa: E402
from kvpress.presses.base_press import BasePress, is_prefilling  # noqa: E402
from kvpress.utils import extract_keys_and_values  # noqa: E402

PressFactory = Callable[..., BasePress]


def _factory(press_class: type[ScorerPress]) -> PressFactory:
    def make(compression_ratio: float, **opts: Any) -> BasePress:
        return press_class(compression_ratio=compression_ratio, **opts)

    make.__doc__ = f"{press_class.__name__}(compression_ratio, **opts)"
    return make


def _kvcrush_press(compression_ratio: float, **opts: Any):
    """Our `KVCrushPress` (kvcrush.integrations.kvpress) over kvpress's SnapKVPress, run by kvpress itself."""
    from kvcrush.integrations.kvpress import KVCrushPress

    return KVCrushPress(SnapKVPress(), compression_ratio=compression_ratio, **opts)


# Every press the grid runs on kvpress's engine, from the grid's one list (`benchmarks.grid.KVPRESS_ENGINE_PRESSES`).
KVPRESS_PRESSES: dict[str, PressFactory] = {
    name: _kvcrush_press if name == "kvcrush" else _factory(getattr(kvpress, class_name))
    for name, class_name in KVPRESS_ENGINE_PRESSES.items()
}

# Presses whose scores need the attention matrices returned by eager attention.
EAGER_PRESSES = frozenset({"observed_attention"})



def check_eager_attention_fits(model: PreTrainedModel, n_tokens: int) -> None:
    """Refuse, before it starts, an eager-attention prefill that cannot fit (`ResourceError` with the numbers).

    The presses of `EAGER_PRESSES` read the attention weights, which only eager attention returns: each layer
    materialises its `[heads, N, N]` scores and their softmax in the model's dtype, 128 GiB for 32 heads at 32k
    tokens in bf16, where SDPA needs none of it.
    """
    device = model.get_input_embeddings().weight.device
    need = 2 * model.config.num_attention_heads * n_tokens * n_tokens * model.dtype.itemsize
    free = available_memory(device)
    if free is not None and need > free:
        raise ResourceError(
            f"Eager attention over {n_tokens:,} tokens (kvpress's {', '.join(sorted(EAGER_PRESSES))} reads the "
            f"attention weights) materialises [{model.config.num_attention_heads} heads, {n_tokens:,}, "
            f"{n_tokens:,}] scores and their softmax per layer: about {format_bytes(need)}, but only "
            f"{format_bytes(free)} is available on {device}. Use a shorter prompt, or presses that do not need "
            "the attention weights."
        )


JobKey = tuple[str, float]  # (press name, compression_ratio)
PressJob = tuple[str, float, dict]  # (press name, compression_ratio, options for make_press)


def make_press(
    press_name: str, compression_ratio: float, window_size: int | None = None, **opts: Any
) -> BasePress:
    """Build a press from ``KVPRESS_PRESSES``; ``window_size`` goes to presses that have one
    (SnapKV, PyramidKV) and is ignored by the others."""
    if press_name not in KVPRESS_PRESSES:
        raise ValueError(f"Unknown kvpress press {press_name!r}; choose from {sorted(KVPRESS_PRESSES)}.")
    if not 0.0 <= compression_ratio < 1.0:
        raise ValueError(f"compression_ratio must be in [0, 1), got {compression_ratio}.")
    press = KVPRESS_PRESSES[press_name](compression_ratio, **opts)
    if window_size is not None and "window_size" in {f.name for f in dataclasses.fields(press)}:
        press = dataclasses.replace(press, window_size=window_size)
    return press


@contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Temporarily switch the model's attention implementation (e.g. to "eager")."""
    previous = model.config._attn_implementation
    if previous == name:
        yield
        return
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _ids_tensor(ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token ids as a ``[1, tokens]`` long tensor."""
    tensor = torch.as_tensor(ids, dtype=torch.long, device=device)
    return tensor.reshape(1, -1)


@contextmanager
def _timed_compress(press: BasePress, watch: Stopwatch) -> Iterator[None]:
    """Time every ``press.compress`` call kvpress's hook makes (an instance attribute shadows the method)."""
    original = press.compress

    def timed(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with watch.timing():
            return original(*args)

    press.compress = timed
    try:
        yield
    finally:
        del press.compress


@torch.no_grad()
def prefill_with_press(
    model: PreTrainedModel,
    press: BasePress | None,
    input_ids: Sequence[int] | torch.Tensor,
    eager: bool = False,
    hook_watch: Stopwatch | None = None,
) -> tuple[DynamicCache, torch.Tensor, float]:
    """Prefill ``input_ids`` under ``press`` (None: no compression) into a fresh DynamicCache.

    This is kvpress's own pipeline (``with press(model)``). Returns the compressed cache, the last
    position's logits ``[1, 1, vocab]`` and the seconds the forward took (the press's hooks included).
    ``eager=True`` runs this prefill with eager attention. ``hook_watch`` (internal) accumulates the
    seconds spent in the press's ``compress``.
    """
    ids = _ids_tensor(input_ids, model.device)
    if eager:
        check_eager_attention_fits(model, ids.shape[-1])
    cache = DynamicCache(config=model.config)
    attention = attention_implementation(model, "eager") if eager else nullcontext()
    timed = _timed_compress(press, hook_watch) if press is not None and hook_watch is not None else nullcontext()
    with attention, press(model) if press is not None else nullcontext(), timed:
        forward = Stopwatch(model)
        with forward.timing():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits, forward.seconds


# --- every press and ratio from one prefill --------------------------------------------------------------


@dataclass
class SharedForward:
    """One uncompressed forward over the context that a group of jobs rode on.

    attention: the implementation it ran under; logits: ``[vocab]`` float, its last position;
    seconds: the forward without any hook work.
    """

    attention: str
    logits: torch.Tensor
    seconds: float


@dataclass
class PressCaches:
    """What `prefill_with_presses` left: one compressed cache per (press name, compression_ratio).

    caches: the cache each press left, exactly what a prefill under that press alone leaves.
    logits: ``[vocab]`` float, the last position of the first forward (the model's own attention
        implementation when any job runs under it); ``forwards[key].logits`` is the job's own.
    kv_bytes_before: uncompressed context cache bytes (`kvcrush.kvcache.cache_bytes`).
    prefill_s: the shared forward(s) without the presses' hook work, summed; ``forwards[key].seconds``
        is the one forward that job rode on.
    hook_s: seconds each press's ``compress`` took over all layers (synchronized).
    forwards: the `SharedForward` each job rode on (jobs of one group share the object).
    """

    caches: dict[JobKey, DynamicCache]
    logits: torch.Tensor
    kv_bytes_before: int
    prefill_s: float
    hook_s: dict[JobKey, float]
    forwards: dict[JobKey, SharedForward] = field(default_factory=dict)

    def job_prefill_s(self, key: JobKey) -> float:
        """A standalone prefill under this press: its shared forward plus its own hook work."""
        return self.forwards[key].seconds + self.hook_s[key]


@dataclass
class _Job:
    """One press of a shared forward: its press, the cache it fills and its hook seconds."""

    key: JobKey
    press: BasePress
    cache: DynamicCache
    watch: Stopwatch


def _attention_for(model: PreTrainedModel, press_name: str) -> str:
    return "eager" if press_name in EAGER_PRESSES else model.config._attn_implementation


def _group_jobs(model: PreTrainedModel, jobs: Sequence[PressJob]) -> dict[str, list[PressJob]]:
    """Jobs by the attention implementation their forward needs (model's own first); keys must be unique."""
    groups: dict[str, list[PressJob]] = {model.config._attn_implementation: []}
    seen: set[JobKey] = set()
    for name, ratio, opts in jobs:
        key = (name, float(ratio))
        if key in seen:
            raise ValueError(f"Duplicate job {key}: one press per (name, compression_ratio).")
        seen.add(key)
        groups.setdefault(_attention_for(model, name), []).append((name, float(ratio), dict(opts)))
    return {attention: members for attention, members in groups.items() if members}


def _prepare_presses(model: PreTrainedModel) -> None:
    """What kvpress's ``press(model)`` does before hooking: every attention layer can reach the rotary
    embedding (ExpectedAttentionPress reads ``module.rotary_emb``)."""
    for module in attention_modules(model):
        module.rotary_emb = model.model.rotary_emb


# Presses whose ``score`` never reads ``compression_ratio`` (checked in kvpress 0.5.5's source; StreamingLLM's
# does: its scores are the kept window itself). kvcrush: our KVCrushPress, scored by its inner SnapKVPress.
RATIO_FREE_SCORES = frozenset({"snapkv", "knorm", "tova", "observed_attention", "expected_attention", "keydiff",
                               "pyramidkv", "kvcrush"})


def _share_scores(press: BasePress, memo: dict[int, tuple[torch.Tensor, float]], watch: Stopwatch) -> None:
    """Compute a press's scores once per layer for all its compression ratios.

    A press's ``score(module, hidden_states, keys, values, attentions, kwargs)`` does not read
    ``compression_ratio`` (only ``compress`` turns scores into a kept count), so the jobs of one press at
    several ratios in one forward get identical scores; the first job computes them, the others reuse
    them (each job's kept set is still its own press's ``compress``). Each job's ``hook_s`` still counts
    the scoring seconds, so it reads as a prefill under that press alone. Wrapper presses (our
    KVCrushPress) score through their inner ``press``, which is the one shared.
    """
    target = press.press if isinstance(getattr(press, "press", None), BasePress) else press
    original = target.score

    def score(module: nn.Module, *args: Any) -> torch.Tensor:
        cached = memo.get(module.layer_idx)
        if cached is not None:
            watch.seconds += cached[1]
            return cached[0]
        layer_watch = Stopwatch(*watch.targets)
        with layer_watch.timing():
            scores = original(module, *args)
        memo[module.layer_idx] = (scores, layer_watch.seconds)
        return scores

    target.score = score  # instance attribute shadows the method that compress() calls


def _store(cache: DynamicCache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Put a press's compressed ``[1, kv_heads, n_kept, head_dim]`` keys and values into layer ``layer_idx``.

    At ratio 0 a press returns the forward's own tensors: shared, never copied (decoding appends with
    ``torch.cat``, which makes new tensors).
    """
    layer = cache.layers[layer_idx]
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _compress_hook(jobs: list[_Job], hook_watch: Stopwatch) -> Callable:
    """A forward hook that runs every job's ``compress`` on the layer's full keys, as kvpress's hook would."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        with hook_watch.timing():
            hidden_states = kwargs["hidden_states"]
            if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
                raise RuntimeError("prefill_with_presses needs the prefill of an empty cache.")
            # The forward's cache layer stays full: each press reads it and writes its result elsewhere.
            keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
            for job in jobs:
                with job.watch.timing():
                    kept_keys, kept_values = job.press.compress(module, hidden_states, keys, values, output[1], kwargs)
                    _store(job.cache, module.layer_idx, kept_keys, kept_values)
        return output

    return hook


@torch.no_grad()
def _shared_forward(model: PreTrainedModel, attention: str, jobs: list[_Job], ids: torch.Tensor
                    ) -> tuple[SharedForward, DynamicCache]:
    """One forward under ``attention`` with every job's hook; returns it and the forward's full cache."""
    if attention == "eager":
        check_eager_attention_fits(model, ids.shape[-1])
    full = DynamicCache(config=model.config)
    hook_watch = Stopwatch(model)
    hook = _compress_hook(jobs, hook_watch)
    forward = Stopwatch(model)
    with forward_hooks(attention_modules(model), hook), attention_implementation(model, attention), forward.timing():
        out = model(input_ids=ids, past_key_values=full, use_cache=True, logits_to_keep=1)
    return SharedForward(attention, out.logits[0, -1].float(), forward.seconds - hook_watch.seconds), full


def prefill_with_presses(
    model: PreTrainedModel, jobs: Sequence[PressJob], context_ids: Sequence[int] | torch.Tensor
) -> PressCaches:
    """Every ``(press name, compression_ratio, options)`` job's compressed cache of ``context_ids``, from one
    forward per attention implementation (one; two when an eager-only press is among the jobs).

    Each layer's hook hands the layer's full keys and values ``[1, kv_heads, N, head_dim]`` to every
    job's own press (`make_press`, ``post_init_from_model`` as ``press(model)`` does) through its own
    ``compress(module, hidden_states, keys, values, attentions, kwargs)``, with exactly the arguments
    kvpress's ``BasePress.forward_hook`` passes, and stores what it returns in that job's own
    DynamicCache. So presses that override ``compress`` (PyramidKV's per-layer budgets, our KVCrushPress)
    behave as under kvpress, and each cache equals what `prefill_with_press` leaves for that press alone.

    Memory: the forward's full cache and every job's compressed cache exist at once (about
    ``1 + sum(1 - ratio)`` times one full cache), plus one layer's attention matrices under eager.
    Llama-like models only (`kvcrush.attention.attention_modules`); batch size 1.
    """
    ids = _ids_tensor(context_ids, model.device)
    if ids.shape[1] == 0:
        raise ValueError("context_ids is empty.")
    groups = _group_jobs(model, jobs)
    _prepare_presses(model)
    caches, hook_s, forwards, shared = {}, {}, {}, []
    kv_bytes_before = 0
    for attention, members in groups.items():
        group = []
        memos: dict[tuple, dict[int, tuple[torch.Tensor, float]]] = {}
        for name, ratio, opts in members:
            press = make_press(name, ratio, **opts)
            press.post_init_from_model(model)
            job = _Job((name, ratio), press, DynamicCache(config=model.config), Stopwatch(model))
            if name in RATIO_FREE_SCORES:
                _share_scores(press, memos.setdefault((name, repr(sorted(opts.items()))), {}), job.watch)
            group.append(job)
        forward, full = _shared_forward(model, attention, group, ids)
        kv_bytes_before = cache_bytes(full)
        del full  # only the jobs' caches outlive the forward
        shared.append(forward)
        for job in group:
            caches[job.key], hook_s[job.key], forwards[job.key] = job.cache, job.watch.seconds, forward
    if not shared:
        raise ValueError("No jobs given.")
    return PressCaches(caches, shared[0].logits, kv_bytes_before, sum(f.seconds for f in shared), hook_s, forwards)


# --- after the prefill: append the tail, then decode or score ---------------------------------------------


def _finish(
    model: PreTrainedModel,
    tokenizer: Any,
    cache: DynamicCache,
    next_logits: torch.Tensor,
    n_context: int,
    tail_ids: Sequence[int] | None,
    max_new_tokens: int,
    continuation_ids: Sequence[int] | None,
    eos_token_ids: Sequence[int] | int | None,
    kv_bytes_before: int,
    prefill_s: float,
    hook_s: float,
    stop_at_newline: bool = False,
) -> Outcome:
    """Everything after a compressed prefill: append ``tail_ids`` uncompressed, then score ``continuation_ids``
    (teacher forcing) and/or decode, exactly as our engine's `PreparedPrompt.generate` does.

    ``next_logits``: ``[vocab]`` float, the prefill's last position. ``cache`` is extended in place. The
    `benchmarks.outcome.Outcome`'s ``prefill_s`` is `prefill_s` (the compressed prefill, ``hook_s`` included)
    plus the tail's ``tail_s``, as our engine counts its prefill.
    """
    kv_bytes_after = cache_bytes(cache)
    kept_per_layer = cache_lengths(cache)
    position = n_context
    reference: ReferenceScores | None = None
    new_ids: list[int] = []
    decode_s = 0.0
    scoring_only = bool(continuation_ids and not max_new_tokens and tail_ids)  # tail and reference in one forward
    tail = Stopwatch(model)
    with tail.timing():
        if scoring_only:
            reference = score_reference(model, cache, None, position, list(continuation_ids),
                                        lead_ids=list(tail_ids))
        elif tail_ids:
            next_logits = extend(model, cache, list(tail_ids), position, last_only=True)[-1]
            position += len(tail_ids)
    tail_s = tail.seconds
    if not scoring_only:
        if continuation_ids:  # on a copy when decoding follows, as our engine does
            scratch = copy.deepcopy(cache) if max_new_tokens else cache
            reference = score_reference(model, scratch, next_logits, position, list(continuation_ids))
        if max_new_tokens:
            stops = stop_ids(model, tokenizer, stop_at_newline, eos_token_ids)
            new_ids, decode_s = timed_greedy_decode(model, cache, next_logits, position, max_new_tokens, stops)
    text = tokenizer.decode(new_ids, skip_special_tokens=True) if tokenizer is not None and new_ids else ""
    return press_outcome(text, new_ids, kv_bytes_before, kv_bytes_after, kept_per_layer, prefill_s, tail_s,
                         decode_s, hook_s, reference)


def run_press(
    model: PreTrainedModel,
    tokenizer: Any,
    press_name: str,
    compression_ratio: float,
    context_ids: list[int],
    question_ids: list[int] | None,
    max_new_tokens: int = 32,
    continuation_ids: list[int] | None = None,
    window_size: int | None = None,
    eos_token_ids: Sequence[int] | int | None = None,
    **press_opts: Any,
) -> Outcome:
    """Prefill ``context_ids`` under a kvpress press, then answer or score a continuation: an `Outcome`, the
    type our engine's runs give (`benchmarks.outcome`).

    The question (if any) is appended uncompressed after compression. Without
    ``continuation_ids`` the model decodes greedily up to ``max_new_tokens``, stopping after an
    end token (``eos_token_ids``, default `kvcrush.decoding.stop_ids`: the model's generation config
    and the tokenizer's); with them, no text is generated and ``nll`` is their mean NLL under teacher
    forcing. Appending, decoding and scoring are our engine's own functions (`kvcrush.decoding`), so the
    two engines differ only in what the compressed cache holds. ``tokenizer`` only decodes the new ids
    and supplies its end token (may be None: empty text). ``press_opts`` go to the press constructor.
    """
    if not context_ids:
        raise ValueError("context_ids is empty.")
    press = make_press(press_name, compression_ratio, window_size=window_size, **press_opts)
    n_context = len(context_ids)
    watch = Stopwatch(model)
    cache, logits, prefill_s = prefill_with_press(model, press, context_ids, eager=press_name in EAGER_PRESSES,
                                                  hook_watch=watch)
    if continuation_ids:
        max_new_tokens = 0  # a continuation is scored, nothing is generated
    return _finish(model, tokenizer, cache, logits[0, -1].float(), n_context, question_ids, max_new_tokens,
                   continuation_ids, eos_token_ids, cache_bytes(cache, n_tokens=n_context), prefill_s, watch.seconds)


def run_presses(
    model: PreTrainedModel,
    tokenizer: Any,
    jobs: Sequence[PressJob],
    context_ids: list[int],
    tail_ids: list[int] | None,
    max_new_tokens: int = 32,
    continuation_ids: list[int] | None = None,
    eos_token_ids: Sequence[int] | int | None = None,
    stop_at_newline: bool = False,
    decode_with_reference: bool = False,
) -> dict[JobKey, Outcome]:
    """`run_press` for every ``(press name, compression_ratio, options)`` job, from one shared prefill.

    `prefill_with_presses` compresses the context for every job at once (all the compressed caches
    exist together, see its memory note); then each job, in order, appends ``tail_ids`` and decodes or
    scores exactly as `run_press` does, and its cache is released. Each result's ``prefill_s`` is the
    shared forward it rode on (without hook work) plus its own ``hook_s`` and ``tail_s``: what a prefill
    under that press alone and appending the tail cost, so the numbers read as `run_press`'s.
    """
    if not context_ids:
        raise ValueError("context_ids is empty.")
    if continuation_ids and not decode_with_reference:
        max_new_tokens = 0  # as run_press: a continuation is scored, nothing is generated
    shared = prefill_with_presses(model, jobs, context_ids)
    results = {}
    if continuation_ids and not max_new_tokens:
        return _score_batched(model, shared, len(context_ids), list(tail_ids or []), list(continuation_ids))
    if tail_ids and max_new_tokens:
        stops = stop_ids(model, tokenizer, stop_at_newline, eos_token_ids)
        return _decode_batched(model, tokenizer, shared, len(context_ids), list(tail_ids), max_new_tokens,
                               list(continuation_ids or []), stops)
    for key in list(shared.caches):
        cache = shared.caches.pop(key)  # frees each compressed cache once its job is done
        results[key] = _finish(model, tokenizer, cache, shared.forwards[key].logits, len(context_ids), tail_ids,
                               max_new_tokens, continuation_ids, eos_token_ids, shared.kv_bytes_before,
                               shared.job_prefill_s(key), shared.hook_s[key], stop_at_newline)
    return results


def _batches(shared: PressCaches, batch_size: int):
    """The jobs' keys in chunks of caches with equal per-layer lengths (stackable), up to ``batch_size``."""
    groups: dict[tuple[int, ...], list[JobKey]] = {}
    for key, cache in shared.caches.items():
        groups.setdefault(tuple(cache_lengths(cache)), []).append(key)
    for members in groups.values():
        for at in range(0, len(members), batch_size):
            yield members[at: at + batch_size]


def _decode_batched(model: PreTrainedModel, tokenizer: Any, shared: PressCaches, n_context: int, tail_ids: list[int],
                    max_new_tokens: int, continuation_ids: list[int], stops: set[int],
                    batch_size: int = 16) -> dict[JobKey, Outcome]:
    """Answering: the jobs' caches decode together in stackable batches (`kvcrush.decoding.greedy_decode_batch`,
    as our engine's `PreparedPrompt.generate_many`), the continuation, if any, scored first in one forward per
    batch (`score_reference_batch`). Ids equal `_finish`'s up to float rounding; ``tail_s`` is an equal share
    of the batch's tail forwards, ``decode_s`` of its decoding steps."""
    order = list(shared.caches)
    results: dict[JobKey, Outcome] = {}
    for chunk in _batches(shared, batch_size):
        caches = [shared.caches.pop(key) for key in chunk]
        sizes = [(cache_bytes(cache), cache_lengths(cache)) for cache in caches]
        scores, share = [None] * len(chunk), 0.0
        if continuation_ids:
            scores, share = score_reference_batch(model, list(caches), n_context, continuation_ids, tail_ids)
        decoded = greedy_decode_batch(model, caches, tail_ids, n_context, max_new_tokens, stops)
        for key, ids, reference, (after, kept) in zip(chunk, decoded.new_ids, scores, sizes, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None and ids else ""
            results[key] = press_outcome(text, ids, shared.kv_bytes_before, after, kept, shared.job_prefill_s(key),
                                         decoded.tail_s + share, decoded.decode_s, shared.hook_s[key], reference)
    return {key: results[key] for key in order}


def _score_batched(model: PreTrainedModel, shared: PressCaches, n_context: int, tail_ids: list[int],
                   continuation_ids: list[int], batch_size: int = 16) -> dict[JobKey, Outcome]:
    """Scoring only: the jobs' caches with equal per-layer lengths go through the model together
    (`kvcrush.decoding.score_reference_batch`, as our engine's `PreparedPrompt.score_many`); each job's
    ``tail_s`` is an equal share of its batch's forward (tail and reference). Without a tail, each job's
    own prefill's last logits predict the first reference token (its forward's: sdpa or eager)."""
    results: dict[JobKey, Outcome] = {}
    for chunk in _batches(shared, batch_size):
        caches = [shared.caches.pop(key) for key in chunk]
        sizes = [(cache_bytes(cache), cache_lengths(cache)) for cache in caches]
        first = None if tail_ids else torch.stack([shared.forwards[key].logits for key in chunk])
        scores, share = score_reference_batch(model, caches, n_context, continuation_ids, tail_ids, first)
        for key, reference, (after, kept) in zip(chunk, scores, sizes, strict=True):
            results[key] = press_outcome("", [], shared.kv_bytes_before, after, kept, shared.job_prefill_s(key), share,
                                         0.0, shared.hook_s[key], reference)
    return results


def press_kept_indices(
    model: PreTrainedModel,
    press_name: str,
    compression_ratio: float,
    input_ids: Sequence[int] | torch.Tensor,
    **opts: Any,
) -> list[torch.Tensor]:
    """Per layer, the token indices a kvpress press keeps, ``[kv_heads, n_kept]`` sorted ascending.

    The press's ``score`` is wrapped to record its scores ``[batch, kv_heads, N]`` during a real
    prefill; the indices are ``scores.topk(n_kept)`` exactly as kvpress's ``ScorerPress.compress``
    selects them, then sorted, with ``n_kept`` the length the press left in that layer
    (``compute_n_kept(N, ratio)``; PyramidKV: its layer's budget). With ratio 0 kvpress skips scoring and
    every layer keeps ``arange(N)``. ``opts`` go to ``make_press`` (e.g. ``window_size``, ``n_sink``).
    """
    press = make_press(press_name, compression_ratio, **opts)
    recorded: dict[int, torch.Tensor] = {}
    original_score = press.score

    def recording_score(
        module: torch.nn.Module,
        hidden_states: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        attentions: torch.Tensor | None,
        kwargs: dict,
    ) -> torch.Tensor:
        scores = original_score(module, hidden_states, keys, values, attentions, kwargs)
        recorded[module.layer_idx] = scores
        return scores

    press.score = recording_score  # instance attribute shadows the method that compress() calls
    n_tokens = _ids_tensor(input_ids, torch.device("cpu")).shape[-1]
    cache, _, _ = prefill_with_press(model, press, input_ids, eager=press_name in EAGER_PRESSES)
    kept = []
    for layer_idx, layer in enumerate(cache.layers):
        if layer_idx in recorded:
            indices = recorded[layer_idx].topk(layer.keys.shape[2], dim=-1).indices[0]
            kept.append(indices.sort(dim=-1).values)
        else:
            kv_heads = layer.keys.shape[1]
            kept.append(torch.arange(n_tokens, device=layer.keys.device).expand(kv_heads, n_tokens).clone())
    return kept
