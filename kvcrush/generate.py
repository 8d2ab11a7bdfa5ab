"""Prefill, compress the real Hugging Face cache layer by layer, then decode greedily.

Data flow: model -> per-layer scores (policy) -> selection -> the cache tensors really shrink -> trace.
Each attention layer gets a forward hook that runs right after the layer wrote its keys and values
during prefill; it scores, selects, and replaces `cache.layers[i].keys/values` with the kept rows.
Decoding then continues on the smaller cache with the true positions: RoPE gets `position_ids`
(the original token positions) while `cache_position` stays at the cache's real length, so the causal
mask of later multi-token forwards is right.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from kvcrush.attention import LayerInputs
from kvcrush.errors import KVCrushError, PromptError
from kvcrush.limits import preflight
from kvcrush.models.loading import LoadedModel
from kvcrush.policies import Policy, make_policy
from kvcrush.prompts import EncodedPrompt, encode_prompt
from kvcrush.trace import GenerationResult, LayerTrace, RunTrace, Timings

Progress = Callable[[str, int, int], None]


class RunCancelled(KVCrushError):
    """The caller's `should_stop` asked to abandon the run."""


def kv_bytes(cache: DynamicCache) -> int:
    """Bytes held by the cache's key and value tensors, read from the real tensors."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def cache_lengths(cache: DynamicCache) -> list[int]:
    """Tokens held per layer (the sequence axis of each layer's keys)."""
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


@dataclass
class PrefillState:
    """A compressed cache ready to decode from, plus what it cost."""

    cache: DynamicCache
    next_logits: torch.Tensor
    position: int
    encoded: EncodedPrompt
    layers: list[LayerTrace]
    timings: Timings
    kv_bytes_before: int
    kv_bytes_after: int


@dataclass
class _HookState:
    policy: Policy
    encoded: EncodedPrompt
    query_aware: bool
    n_layers: int
    progress: Progress | None
    should_stop: Callable[[], bool] | None
    layers: list[LayerTrace] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    policy_s: float = 0.0


def _layer_bytes(layer, n_tokens: int | None = None) -> int:
    """Bytes of one cache layer's keys and values (the first `n_tokens` rows when given)."""
    total = 0
    for tensor in (layer.keys, layer.values):
        rows = tensor if n_tokens is None else tensor[:, :, :n_tokens]
        total += rows.numel() * rows.element_size()
    return total


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor `[1, kv_heads, L, d]`, index `[kv_heads, T]` -> `[1, kv_heads, T, d]`."""
    expanded = index[None, :, :, None].expand(1, -1, -1, tensor.shape[-1])
    return torch.gather(tensor, 2, expanded).contiguous()


def _compress_hook(state: _HookState):
    def hook(module, args, kwargs, output):
        if state.should_stop is not None and state.should_stop():
            raise RunCancelled("The run was cancelled.")
        start = time.perf_counter()
        layer_cache = kwargs["past_key_values"].layers[module.layer_idx]
        cos, sin = kwargs["position_embeddings"]
        n_prefilled = layer_cache.keys.shape[2]
        inputs = LayerInputs(
            module=module, layer_idx=module.layer_idx, n_layers=state.n_layers,
            hidden_states=kwargs["hidden_states"], keys=layer_cache.keys, values=layer_cache.values,
            cos=cos, sin=sin, n_context=n_prefilled, window_start=state.encoded.n_context,
            query_aware=state.query_aware, seed=state.policy.seed,
        )
        with torch.no_grad():
            trace = state.policy.compress(inputs)
        state.bytes_before += _layer_bytes(layer_cache)
        if not trace.no_op:
            kept = trace.kept.to(layer_cache.keys.device)
            layer_cache.keys = _gather_rows(layer_cache.keys, kept)
            layer_cache.values = _gather_rows(layer_cache.values, kept)
        state.bytes_after += _layer_bytes(layer_cache)
        state.layers.append(trace)
        state.policy_s += time.perf_counter() - start
        if state.progress is not None:
            state.progress("prefill", len(state.layers), state.n_layers)
        return output

    return hook


def _attention_modules(model) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long, device=device)


def _positions(start: int, count: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, start + count, device=device)[None]


def extend_cache(lm: LoadedModel, cache: DynamicCache, ids: list[int], start: int,
                 last_only: bool = False) -> torch.Tensor:
    """Feed `ids` at true positions `start...` on top of `cache`; returns their logits `[len(ids), vocab]`.

    One forward when every layer holds the same number of tokens. When budgets differ per layer
    (PyramidKV) no single causal mask fits all layers, so the tokens go one at a time, which needs none.
    """
    lengths = set(cache_lengths(cache))
    chunks = [ids] if len(lengths) <= 1 else [[token] for token in ids]
    logits, position = [], start
    for chunk in chunks:
        output = lm.model(input_ids=_ids(chunk, lm.device), past_key_values=cache,
                          position_ids=_positions(position, len(chunk), lm.device), use_cache=True,
                          logits_to_keep=1 if last_only else 0)
        logits.append(output.logits[0].float())
        position += len(chunk)
    return torch.cat(logits)


def _no_op_traces(n_layers: int, n_context: int, kv_heads: int) -> list[LayerTrace]:
    everything = torch.arange(n_context).expand(kv_heads, n_context)
    return [LayerTrace(i, n_context, n_context, 0, n_context, 0, 0, 0, True, everything) for i in range(n_layers)]


def check_length(lm: LoadedModel, n_tokens: int, max_new_tokens: int) -> None:
    """Refuse prompts the model cannot position, with the numbers."""
    limit = lm.max_tokens
    if n_tokens + max_new_tokens > limit:
        raise PromptError(
            f"The prompt has {n_tokens} tokens and {max_new_tokens} more would be generated, but "
            f"{lm.name} handles at most {limit} positions. Shorten the text by about "
            f"{n_tokens + max_new_tokens - limit} tokens or lower max_new_tokens."
        )


def prefill(
    lm: LoadedModel,
    encoded: EncodedPrompt,
    policy: Policy,
    query_aware: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PrefillState:
    """Prefill the context, compress every layer's cache, and append the tail (question).

    Only the last position's logits are computed (`logits_to_keep=1`): a 2k-token prompt would
    otherwise materialise `[2048, vocab]` floats (about 400 MB for SmolLM2) that nothing reads.
    """
    model, device = lm.model, lm.device
    cache = DynamicCache(config=model.config)
    timings = Timings()
    n_context, n_tail = encoded.n_context, len(encoded.tail_ids)
    state = _HookState(policy, encoded, query_aware and n_tail > 0, lm.n_layers, progress, should_stop)

    start = time.perf_counter()
    with torch.no_grad():
        if not policy.evicts:
            output = model(input_ids=_ids(encoded.all_ids, device), past_key_values=cache, use_cache=True,
                           logits_to_keep=1)
            next_logits = output.logits[0, -1].float()
            n_budgeted = n_context + n_tail if state.query_aware else n_context
            layers = _no_op_traces(lm.n_layers, n_budgeted, lm.kv_heads)
            before = after = sum(_layer_bytes(layer, n_budgeted) for layer in cache.layers)
            if progress is not None:
                progress("prefill", lm.n_layers, lm.n_layers)
        else:
            first = encoded.all_ids if state.query_aware else encoded.context_ids
            hooks = [m.register_forward_hook(_compress_hook(state), with_kwargs=True)
                     for m in _attention_modules(model)]
            try:
                output = model(input_ids=_ids(first, device), past_key_values=cache, use_cache=True,
                               logits_to_keep=1)
            finally:
                for hook in hooks:
                    hook.remove()
            before, after = state.bytes_before, state.bytes_after
            next_logits = output.logits[0, -1].float()
            if not state.query_aware and n_tail:
                next_logits = extend_cache(lm, cache, encoded.tail_ids, n_context, last_only=True)[-1]
            layers = state.layers
    elapsed = time.perf_counter() - start

    timings.select_s = state.policy_s
    timings.prefill_s = elapsed - state.policy_s
    timings.score_s = sum(layer.score_s for layer in layers)
    timings.crush_s = sum(layer.crush_s for layer in layers)
    return PrefillState(cache, next_logits, n_context + n_tail, encoded, layers, timings,
                        before, after)


def stop_ids(lm: LoadedModel) -> set[int]:
    """Token ids that end a greedy answer: the generation config's and the tokenizer's end tokens."""
    stops: set[int] = set()
    for source in (getattr(lm.model.generation_config, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if isinstance(source, int):
            stops.add(source)
        elif isinstance(source, (list, tuple)):
            stops.update(int(s) for s in source)
    return stops


def decode_greedy(lm: LoadedModel, state: PrefillState, max_new_tokens: int, progress: Progress | None = None,
                  should_stop: Callable[[], bool] | None = None) -> list[int]:
    """Greedy decoding on the (compressed) cache with true positions; stops at an end-of-turn token."""
    stops = stop_ids(lm)
    new_ids: list[int] = []
    logits = state.next_logits
    start = time.perf_counter()
    with torch.no_grad():
        for step in range(max_new_tokens):
            if should_stop is not None and should_stop():
                raise RunCancelled("The run was cancelled.")
            token = int(torch.argmax(logits))
            new_ids.append(token)
            if progress is not None:
                progress("decode", step + 1, max_new_tokens)
            if token in stops or step == max_new_tokens - 1:
                break
            output = lm.model(input_ids=_ids([token], lm.device), past_key_values=state.cache,
                              position_ids=_positions(state.position, 1, lm.device), use_cache=True)
            state.position += 1
            logits = output.logits[0, -1].float()
    state.timings.decode_s = time.perf_counter() - start
    state.timings.decode_tokens = len(new_ids)
    return new_ids


def teacher_forced_nll(lm: LoadedModel, state: PrefillState, reference_ids: list[int]) -> float:
    """Mean negative log-likelihood of `reference_ids` following the (compressed) cache."""
    if not reference_ids:
        raise PromptError("The reference continuation is empty.")
    logits = [state.next_logits[None]]
    if len(reference_ids) > 1:
        with torch.no_grad():
            logits.append(extend_cache(lm, state.cache, reference_ids[:-1], state.position))
    log_probs = torch.log_softmax(torch.cat(logits), dim=-1)
    target = torch.tensor(reference_ids, device=log_probs.device)
    return float(-log_probs.gather(1, target[:, None]).mean())


def _as_policy(policy: Policy | str) -> Policy:
    return make_policy(policy) if isinstance(policy, str) else policy


def generate(
    model: LoadedModel,
    prompt: str,
    policy: Policy | str,
    max_new_tokens: int = 64,
    question: str | None = None,
    query_aware: bool = False,
    chat_template: bool | None = None,
    reference_ids: list[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Compress the prompt's KV cache with `policy` and generate greedily.

    With `question`, the context is compressed first and the question is appended uncompressed
    (query-agnostic); with `query_aware=True` the question is the observation window and is kept.
    `reference_ids` (e.g. the full cache's answer) adds their teacher-forced NLL to the result.
    The model's lock is held for the whole run, so concurrent callers queue instead of mixing hooks.
    """
    encoded = encode_prompt(model.tokenizer, prompt, question, chat_template)
    return generate_encoded(model, encoded, policy, max_new_tokens, query_aware, reference_ids, progress,
                            should_stop)


def generate_encoded(
    model: LoadedModel,
    encoded: EncodedPrompt,
    policy: Policy | str,
    max_new_tokens: int = 64,
    query_aware: bool = False,
    reference_ids: list[int] | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """`generate` on token ids already split into context and tail (see `kvcrush.encode_prompt`).

    `max_new_tokens=0` only prefills and compresses (useful with `reference_ids` to score a
    continuation, as the benchmark's likelihood task does).
    """
    policy = _as_policy(policy)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise PromptError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}.")
    if encoded.n_context == 0:
        raise PromptError("The prompt is empty: paste or upload some text to compress.")
    check_length(model, len(encoded.all_ids) + len(reference_ids or []), max_new_tokens)
    preflight(model, len(encoded.all_ids) + len(reference_ids or []), max_new_tokens, policy)
    with model.lock:
        state = prefill(model, encoded, policy, query_aware, progress, should_stop)
        nll = None
        if reference_ids:
            nll = teacher_forced_nll(model, _clone_state(state) if max_new_tokens else state, reference_ids)
        new_ids = decode_greedy(model, state, max_new_tokens, progress, should_stop) if max_new_tokens else []
    text = model.tokenizer.decode(new_ids, skip_special_tokens=True)
    budgeted = encoded.all_ids if query_aware and encoded.tail_ids else encoded.context_ids
    tokens = [model.tokenizer.decode([i]) for i in budgeted]
    trace = RunTrace(
        policy=policy.describe(), model=model.name, token_strings=tokens, n_context=len(budgeted),
        n_question=len(encoded.tail_ids), query_aware=query_aware, layers=state.layers,
    )
    return GenerationResult(text, new_ids, state.kv_bytes_before, state.kv_bytes_after, state.timings, trace, nll)


def _clone_state(state: PrefillState) -> PrefillState:
    """A copy whose cache can be extended without touching the original (for scoring a reference)."""
    return PrefillState(copy.deepcopy(state.cache), state.next_logits, state.position, state.encoded, state.layers,
                        Timings(), state.kv_bytes_before, state.kv_bytes_after)
