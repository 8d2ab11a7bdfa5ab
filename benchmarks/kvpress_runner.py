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
`continuation_nll`) and KV bytes are counted by `kvcrush.kvcache.cache_bytes`, so a difference between
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
  StreamingLLM ``n_sink=4``; ExpectedAttention ``n_future_positions=512``, ``n_sink=4``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from kvpress import (
    ExpectedAttentionPress,
    KeyDiffPress,
    KnormPress,
    ObservedAttentionPress,
    ScorerPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from kvpress.utils import compute_n_kept
from transformers import DynamicCache, PreTrainedModel

from kvcrush.decoding import continuation_nll, extend, stop_ids, synchronize, timed_greedy_decode
from kvcrush.kvcache import cache_bytes, cache_lengths

PressFactory = Callable[..., ScorerPress]


def _factory(press_class: type[ScorerPress]) -> PressFactory:
    def make(compression_ratio: float, **opts: Any) -> ScorerPress:
        return press_class(compression_ratio=compression_ratio, **opts)

    make.__doc__ = f"{press_class.__name__}(compression_ratio, **opts)"
    return make


def _kvcrush_press(compression_ratio: float, **opts: Any):
    """Our `KVCrushPress` (kvcrush.integrations.kvpress) over kvpress's SnapKVPress, run by kvpress itself."""
    from kvcrush.integrations.kvpress import KVCrushPress

    return KVCrushPress(SnapKVPress(), compression_ratio=compression_ratio, **opts)


KVPRESS_PRESSES: dict[str, PressFactory] = {
    "snapkv": _factory(SnapKVPress),
    "streaming": _factory(StreamingLLMPress),
    "knorm": _factory(KnormPress),
    "tova": _factory(TOVAPress),
    "observed_attention": _factory(ObservedAttentionPress),
    "expected_attention": _factory(ExpectedAttentionPress),
    "keydiff": _factory(KeyDiffPress),
    "kvcrush": _kvcrush_press,
}

# Presses whose scores need the attention matrices returned by eager attention.
EAGER_PRESSES = frozenset({"observed_attention"})


@dataclass
class PressResult:
    """What one kvpress run produced and cost.

    ``kv_bytes_before`` is what an uncompressed prefill of the context holds (all layers, keys and
    values, N tokens) and ``kv_bytes_after`` what the press left, both counted by
    `kvcrush.kvcache.cache_bytes` as in our engine; ``kept_per_layer`` the tokens per layer after
    compression. ``nll`` is the mean negative log-likelihood (nats/token) of the continuation, or None
    when decoding instead. ``prefill_s``: the compressed prefill of the context (the press's scoring
    and eviction included); ``question_s``: appending the question uncompressed; ``decode_s``: greedy
    decoding alone (0 when scoring a continuation), as our engine's `Timings.decode_s`.
    """

    text: str
    new_token_ids: list[int]
    kv_bytes_before: int
    kv_bytes_after: int
    kept_per_layer: list[int]
    prefill_s: float
    decode_s: float
    nll: float | None
    question_s: float = 0.0


def make_press(
    press_name: str, compression_ratio: float, window_size: int | None = None, **opts: Any
) -> ScorerPress:
    """Build a press from ``KVPRESS_PRESSES``; ``window_size`` goes to presses that have one
    (SnapKV) and is ignored by the others."""
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


@torch.no_grad()
def prefill_with_press(
    model: PreTrainedModel,
    press: ScorerPress | None,
    input_ids: Sequence[int] | torch.Tensor,
    eager: bool = False,
) -> tuple[DynamicCache, torch.Tensor, float]:
    """Prefill ``input_ids`` under ``press`` (None: no compression) into a fresh DynamicCache.

    Returns the compressed cache, the last position's logits ``[1, 1, vocab]`` and the seconds the
    forward took. ``eager=True`` runs this prefill with eager attention.
    """
    ids = _ids_tensor(input_ids, model.device)
    cache = DynamicCache(config=model.config)
    attention = attention_implementation(model, "eager") if eager else nullcontext()
    with attention, press(model) if press is not None else nullcontext():
        synchronize(model.device)
        start = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        synchronize(model.device)
        seconds = time.perf_counter() - start
    return cache, out.logits, seconds


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
) -> PressResult:
    """Prefill ``context_ids`` under a kvpress press, then answer or score a continuation.

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
    eager = press_name in EAGER_PRESSES
    cache, logits, prefill_s = prefill_with_press(model, press, context_ids, eager=eager)
    kv_bytes_before = cache_bytes(cache, n_tokens=n_context)
    kv_bytes_after = cache_bytes(cache)
    kept_per_layer = cache_lengths(cache)

    next_logits = logits[0, -1].float()
    position = n_context
    start = time.perf_counter()
    if question_ids:
        next_logits = extend(model, cache, list(question_ids), position, last_only=True)[-1]
        position += len(question_ids)
    synchronize(model.device)
    question_s = time.perf_counter() - start
    nll: float | None = None
    new_ids: list[int] = []
    decode_s = 0.0
    if continuation_ids:
        nll = continuation_nll(model, cache, next_logits, position, list(continuation_ids))
    elif max_new_tokens:
        if eos_token_ids is None:
            stops = stop_ids(model, tokenizer)
        else:
            stops = {eos_token_ids} if isinstance(eos_token_ids, int) else set(eos_token_ids)
        new_ids, decode_s = timed_greedy_decode(model, cache, next_logits, position, max_new_tokens, stops)

    text = tokenizer.decode(new_ids, skip_special_tokens=True) if tokenizer is not None and new_ids else ""
    return PressResult(
        text=text,
        new_token_ids=new_ids,
        kv_bytes_before=kv_bytes_before,
        kv_bytes_after=kv_bytes_after,
        kept_per_layer=kept_per_layer,
        prefill_s=prefill_s,
        decode_s=decode_s,
        nll=nll,
        question_s=question_s,
    )


def press_kept_indices(
    model: PreTrainedModel,
    press_name: str,
    compression_ratio: float,
    input_ids: Sequence[int] | torch.Tensor,
    **opts: Any,
) -> list[torch.Tensor]:
    """Per layer, the token indices a kvpress press keeps, ``[kv_heads, n_kept]`` sorted ascending.

    The press's ``score`` is wrapped to record its scores ``[batch, kv_heads, N]`` during a real
    prefill; the indices are ``scores.topk(compute_n_kept(N, ratio))`` exactly as kvpress's
    ``ScorerPress.compress`` selects them, then sorted. With ratio 0 kvpress skips scoring and every
    layer keeps ``arange(N)``. ``opts`` go to ``make_press`` (e.g. ``window_size``, ``n_sink``).
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
    n_kept = compute_n_kept(n_tokens, compression_ratio)
    kept = []
    for layer_idx, layer in enumerate(cache.layers):
        if layer_idx in recorded:
            indices = recorded[layer_idx].topk(n_kept, dim=-1).indices[0]
            kept.append(indices.sort(dim=-1).values)
        else:
            kv_heads = layer.keys.shape[1]
            kept.append(torch.arange(n_tokens, device=layer.keys.device).expand(kv_heads, n_tokens).clone())
    return kept

