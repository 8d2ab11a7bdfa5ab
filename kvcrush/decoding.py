"""The one decoding loop: extend a (compressed) cache at true positions, decode greedily, score a continuation.

Our engine and the benchmark's kvpress runs both decode with these functions, so a difference between
them is a difference in what the cache holds, never in how it is read. After eviction a cache is
shorter than the sequence: every forward passes `position_ids` (the true positions, for RoPE) while
`cache_position` is left to its default, the cache's real length, which keeps the causal mask right.

Every forward goes through `_model_forward`, which picks the mask: the model's own when every layer
holds the same rows; `_ragged_sdpa` when layers hold different numbers of rows (PyramidKV); and, for a
cache that carries its rows' true positions (models with sliding-window layers, `kvcrush.sliding`),
`_positioned_sdpa`, whose mask comes from those positions.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import repeat_kv

from kvcrush.compat import cache_kwargs
from kvcrush.devices import Stopwatch
from kvcrush.errors import PromptError, RunCancelled
from kvcrush.kvcache import cache_lengths, stack_caches
from kvcrush.sliding import KeyPositions

Progress = Callable[[str, int, int], None]


def stop_ids(model, tokenizer=None, stop_at_newline: bool = False, eos_token_ids=None) -> set[int]:
    """Token ids that end a greedy answer: `eos_token_ids` (an id or ids) when given, else the generation config's
    and the tokenizer's end tokens; with `stop_at_newline`, also every id whose text holds a line break
    (`newline_ids`). The one place an answer's stop tokens are assembled (our engine and the kvpress runner)."""
    stops: set[int] = set()
    if eos_token_ids is not None:
        sources = [eos_token_ids]
    else:
        sources = [getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
        if tokenizer is not None:
            sources.append(tokenizer.eos_token_id)
    for source in sources:
        if isinstance(source, int):
            stops.add(source)
        elif isinstance(source, (list, tuple, set, frozenset)):
            stops.update(int(s) for s in source)
    if stop_at_newline and tokenizer is not None:
        stops |= newline_ids(tokenizer)
    return stops


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long, device=device)


def _positions(start: int, count: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, start + count, device=device)[None]


RAGGED_ATTENTION = "kvcrush_ragged_sdpa"


def _ragged_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                 dropout: float = 0.0, **kwargs):
    """SDPA whose causal mask comes from this layer's own key length.

    After per-layer budgets (PyramidKV) layers hold different numbers of tokens, so the one mask a
    model builds from layer 0's length fits no other layer. The `q` new tokens are the last `q` keys of
    every layer, so query i sees every cached key and the new ones up to itself: key j is visible iff
    `j <= kv_len - q + i`. (transformers builds no mask for an attention implementation it has no mask
    function for, so `attention_mask` is None here.)
    """
    q_len, kv_len = query.shape[-2], key.shape[-2]
    mask = None
    if q_len > 1:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, **kwargs)


AttentionInterface.register(RAGGED_ATTENTION, _ragged_sdpa)


POSITIONED_ATTENTION = "kvcrush_positioned_sdpa"
_ACTIVE_POSITIONS: contextvars.ContextVar[KeyPositions | None] = contextvars.ContextVar("kvcrush_key_positions",
                                                                                       default=None)


def _positioned_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     dropout: float = 0.0, scaling: float | None = None, softcap: float | None = None, **kwargs):
    """Attention whose mask comes from the true position of every cached row (`kvcrush.sliding.KeyPositions`).

    query `[batch, query_heads, q, d]` at `position_ids` `[batch, q]`; key/value `[batch, kv_heads, rows, d]`.
    A row is visible iff its position is at most the query's and, on a sliding layer, within the window,
    so a compressed sliding layer never attends to a position older than its window. With Gemma-2's
    soft-capping (`softcap`), the logits are capped as transformers' eager attention caps them.
    """
    positions = _ACTIVE_POSITIONS.get()
    group = query.shape[1] // key.shape[1]
    mask = positions.mask(module.layer_idx, kwargs.pop("position_ids"), group)
    if softcap is None:
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.matmul(query, repeat_kv(key, group).transpose(2, 3)) * scaling
    logits = torch.tanh(logits / softcap) * softcap
    logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, repeat_kv(value, group))
    return output.transpose(1, 2).contiguous(), weights


AttentionInterface.register(POSITIONED_ATTENTION, _positioned_sdpa)


# Attention implementations that wrap another (name prefix -> registers the wrapper over a base, returns its
# name): `kvcrush.attention_use`'s recorder. A mask chosen here keeps the wrapper around it.
IMPLEMENTATION_WRAPPERS: dict[str, Callable[[str], str]] = {}


def visible_rows(layer_idx: int, position_ids: torch.Tensor | None, group: int) -> torch.Tensor | None:
    """Inside a positioned forward: the `[batch, query_heads, q, rows]` mask of layer `layer_idx`; else None."""
    positions = _ACTIVE_POSITIONS.get()
    if positions is None or position_ids is None:
        return None
    return positions.mask(layer_idx, position_ids, group)


@contextmanager
def _attention(model, name: str):
    """Run the model with the attention implementation `name` (restored afterwards), inside the wrapper the
    current implementation is, if any (`IMPLEMENTATION_WRAPPERS`)."""
    config = model.config
    previous = config._attn_implementation
    for prefix, wrap in IMPLEMENTATION_WRAPPERS.items():
        if previous.startswith(prefix):
            name = wrap(name)
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


@contextmanager
def _masking(model, cache, start: int, count: int):
    """The mask for feeding `count` tokens at true positions `start...` on top of `cache` (see the module doc)."""
    positions: KeyPositions | None = getattr(cache, "key_positions", None)
    if positions is not None:
        positions.append(start, count)
        token = _ACTIVE_POSITIONS.set(positions)
        try:
            with _attention(model, POSITIONED_ATTENTION):
                yield
        finally:
            _ACTIVE_POSITIONS.reset(token)
    elif len(set(cache_lengths(cache))) > 1:  # sdpa only: `extend` feeds other implementations token by token
        with _attention(model, RAGGED_ATTENTION):
            yield
    else:
        yield


def _model_forward(model, cache, input_ids: torch.Tensor, start: int, keep: int = 0):
    """One forward of `input_ids` `[batch, q]` at true positions `start...` on top of `cache` (the only place
    the model is called while decoding); `keep` > 0: logits of the last `keep` positions only."""
    batch, count = input_ids.shape
    positions = _positions(start, count, input_ids.device).expand(batch, -1)
    with _masking(model, cache, start, count):
        return model(input_ids=input_ids, **cache_kwargs(model, cache), position_ids=positions, use_cache=True,
                     logits_to_keep=keep)


@torch.no_grad()
def extend(model, cache, ids: list[int], start: int, last_only: bool = False, keep: int = 0) -> torch.Tensor:
    """Feed `ids` at true positions `start...` on top of `cache`; returns their logits `[len(ids) or 1, vocab]`
    (`keep` > 0: only the last `keep` positions' logits, `[keep, vocab]`).

    One forward. When budgets differ per layer (PyramidKV) no single causal mask fits all layers, so the
    forward runs with `_ragged_sdpa`, which builds each layer's mask from its own length (under an
    attention implementation other than sdpa the tokens go one at a time, which needs no mask).
    """
    keep = 1 if last_only else keep
    ragged = len(set(cache_lengths(cache))) > 1
    if not ragged or model.config._attn_implementation == "sdpa" or getattr(cache, "key_positions", None):
        return _forward(model, cache, ids, start, keep)
    logits, position = [], start
    for i, token in enumerate(ids):
        wanted = not keep or i >= len(ids) - keep
        output = _forward(model, cache, [token], position, 1)
        if wanted:
            logits.append(output)
        position += 1
    return torch.cat(logits)


def _forward(model, cache, ids: list[int], start: int, keep: int) -> torch.Tensor:
    """One forward of `ids` at true positions; logits of the last `keep` positions (0: all) `[n, vocab]`."""
    return _model_forward(model, cache, _ids(ids, model.device), start, keep).logits[0].float()


@torch.no_grad()
def greedy_decode(model, cache, logits: torch.Tensor, position: int, max_new_tokens: int, stops: set[int],
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                  on_token: Callable[[list[int]], None] | None = None,
                  after_forward: Callable[[int], None] | None = None) -> list[int]:
    """Greedy tokens after `logits` (`[vocab]`, the next token's); token i goes at true position `position + i`.

    Stops after a token in `stops` or `max_new_tokens` tokens. `on_token(ids_so_far)` streams the answer;
    `after_forward(n_generated)` runs after each forward has appended a token to `cache` (decode-time
    eviction shrinks the cache there).
    """
    new_ids: list[int] = []
    for step in range(max_new_tokens):
        if should_stop is not None and should_stop():
            raise RunCancelled("The run was cancelled.")
        token = int(torch.argmax(logits))
        new_ids.append(token)
        if on_token is not None:
            on_token(new_ids)
        if progress is not None:
            progress("decode", step + 1, max_new_tokens)
        if token in stops or step == max_new_tokens - 1:
            break
        logits = _forward(model, cache, [token], position + step, 1)[-1]
        if after_forward is not None:
            after_forward(step + 1)
    return new_ids


@dataclass(frozen=True)
class ReferenceScores:
    """How a (compressed) cache predicts a given continuation under teacher forcing.

    token_nll: `[n]` negative log-likelihood (nats) of each reference token given the ones before.
    greedy_match: `[n]` whether each reference token is the argmax given the ones before.

    Greedy decoding emits exactly the reference as its first tokens iff every `greedy_match` is true:
    step i of greedy decoding sees the same prefix as teacher forcing as long as all earlier steps
    matched. So `all(greedy_match)` is "the greedy answer starts with the reference", obtained in one
    forward instead of a decoding loop (the exact-match metric of RULER-style retrieval, Hsieh et al.
    2024, with the answer prefix in the prompt).
    """

    token_nll: tuple[float, ...]
    greedy_match: tuple[bool, ...]

    @property
    def nll(self) -> float:
        """Mean NLL, nats per token."""
        return sum(self.token_nll) / len(self.token_nll)

    @property
    def total_nll(self) -> float:
        """Negative log-likelihood of the whole reference (nats): -log p(reference | prompt)."""
        return sum(self.token_nll)

    @property
    def greedy(self) -> bool:
        """Greedy decoding would produce the reference (as a prefix of its answer)."""
        return all(self.greedy_match)

    def span_greedy(self, start: int, end: int) -> bool:
        """Every token in `[start, end)` is the argmax given the reference before it."""
        return all(self.greedy_match[start:end])


@torch.no_grad()
def score_reference(model, cache, logits: torch.Tensor | None, position: int, reference_ids: list[int],
                    lead_ids: list[int] | None = None) -> ReferenceScores:
    """Per-token NLL and argmax agreement of `reference_ids` under teacher forcing.

    `logits` (`[vocab]`) predict the first reference token; the rest are predicted by forwarding the
    reference (all but its last token) at true positions `position...` on top of `cache` (which grows).
    With `lead_ids` (tokens still to append before the reference, e.g. the question), they and the
    reference go in one forward from `position` and `logits` is not used.
    """
    if not reference_ids:
        raise PromptError("The reference continuation is empty.")
    if lead_ids:
        stacked = extend(model, cache, list(lead_ids) + list(reference_ids[:-1]), position, keep=len(reference_ids))
    else:
        rows = [logits.float().reshape(1, -1)]
        if len(reference_ids) > 1:
            rows.append(extend(model, cache, list(reference_ids[:-1]), position))
        stacked = torch.cat(rows)
    return reference_scores(stacked, reference_ids)


def reference_scores(logits: torch.Tensor, reference_ids: list[int]) -> ReferenceScores:
    """`ReferenceScores` from the logits `[n, vocab]` that predict each of the n reference tokens."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(list(reference_ids), device=log_probs.device)
    token_nll = (-log_probs.gather(1, target[:, None]))[:, 0]
    match = logits.argmax(dim=-1) == target
    return ReferenceScores(tuple(token_nll.tolist()), tuple(bool(m) for m in match.tolist()))


@torch.no_grad()
def score_reference_batch(model, caches: list, position: int, reference_ids: list[int],
                          lead_ids: list[int], first_logits: torch.Tensor | None = None,
                          ) -> tuple[list[ReferenceScores], float]:
    """`score_reference` for several compressed caches in one forward.

    `caches` (each `[1, kv_heads, L_layer, d]`, equal `L_layer` across caches) are stacked on the batch
    axis (`kvcrush.kvcache.stack_caches`) and the list is emptied, so the caller's copies can be freed
    before the forward. Every row gets the same tokens at the same true positions (on a CPU a batch of
    16 costs about half as much per row as one row at a time). With `lead_ids` (the tail still to append)
    they and the reference go in one forward; without them `first_logits` (`[vocab]`, or `[batch, vocab]`
    with a row per cache) predict the first reference token and the forward holds the rest of the
    reference, as `score_reference` with `logits`. Returns the scores in order and each row's equal share
    of the forward's seconds (synchronized).
    """
    if not reference_ids or (not lead_ids and first_logits is None):
        raise PromptError("score_reference_batch needs a non-empty reference and lead ids or first logits.")
    batch = len(caches)
    if lead_ids:
        _, logits, seconds = _stacked_forward(model, caches, list(lead_ids) + list(reference_ids[:-1]), position,
                                              len(reference_ids))
    else:
        first = first_logits.float().reshape(-1, 1, first_logits.shape[-1]).expand(batch, 1, -1)
        logits, seconds = first, 0.0
        if len(reference_ids) > 1:
            _, rest, seconds = _stacked_forward(model, caches, list(reference_ids[:-1]), position,
                                                len(reference_ids) - 1)
            logits = torch.cat([first, rest.float()], dim=1)
        caches.clear()
    return [reference_scores(logits[row], reference_ids) for row in range(batch)], seconds / batch


def _stacked_forward(model, caches: list, ids: list[int], position: int, keep: int):
    """One forward of `ids` at true positions `position...` on several compressed caches stacked on the batch axis.

    `caches` (each `[1, kv_heads, L_layer, d]`, equal `L_layer` across caches) are stacked
    (`kvcrush.kvcache.stack_caches`) and the list is emptied, so the caller's copies can be freed before
    the forward; layers of different lengths get their own causal masks (`_ragged_sdpa`). Returns the
    stacked cache (now holding `ids` too), the logits of the last `keep` positions `[batch, keep, vocab]`
    and the forward's seconds (synchronized).
    """
    batch = len(caches)
    cache = stack_caches(caches, model.config)
    caches.clear()
    device = model.device
    input_ids = torch.tensor([list(ids)] * batch, dtype=torch.long, device=device)
    watch = Stopwatch(model)
    with watch.timing():
        output = _model_forward(model, cache, input_ids, position, keep)
    return cache, output.logits, watch.seconds


@dataclass(frozen=True)
class BatchDecode:
    """What `greedy_decode_batch` returns: each row's greedy ids, and each row's equal share of the tail's
    forward and of the decoding steps (seconds, synchronized)."""

    new_ids: list[list[int]]
    tail_s: float
    decode_s: float


@torch.no_grad()
def greedy_decode_batch(model, caches: list, tail_ids: list[int], position: int, max_new_tokens: int,
                        stops: set[int]) -> BatchDecode:
    """`extend(tail_ids)` then `greedy_decode` for several compressed caches at once, one forward per step.

    `caches` (each `[1, kv_heads, L_layer, d]`, equal `L_layer` across caches) are stacked on the batch
    axis and the list is emptied, as in `score_reference_batch`. Every row gets the tail at true
    positions `position...` and then its own greedy token at the same next position; a row that emitted
    a token in `stops` keeps being fed (its later tokens are dropped) until every row has stopped or
    `max_new_tokens` are out. Row i's ids equal `greedy_decode` on cache i alone, up to float rounding in
    batched matrix products (a near-tie of two logits could break the other way).
    """
    if not tail_ids or max_new_tokens < 1:
        raise PromptError("greedy_decode_batch needs tail ids and max_new_tokens >= 1.")
    batch = len(caches)
    cache, logits, tail_s = _stacked_forward(model, caches, tail_ids, position, 1)
    logits = logits[:, -1].float()
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    next_position = position + len(tail_ids)
    watch = Stopwatch(model)
    with watch.timing():
        for step in range(max_new_tokens):
            tokens = logits.argmax(dim=-1)
            for row, token in enumerate(tokens.tolist()):  # one host sync per step for the whole batch
                if not done[row]:
                    new_ids[row].append(token)
                    done[row] = token in stops
            if all(done) or step == max_new_tokens - 1:
                break
            logits = _model_forward(model, cache, tokens[:, None], next_position + step, 1).logits[:, -1].float()
    return BatchDecode(new_ids, tail_s / batch, watch.seconds / batch)


def continuation_nll(model, cache, logits: torch.Tensor, position: int, reference_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats/token) of `reference_ids` under teacher forcing (`score_reference`)."""
    return score_reference(model, cache, logits, position, reference_ids).nll


def newline_ids(tokenizer) -> frozenset[int]:
    """Every vocabulary id whose text contains a line break: answers stop at the end of their line."""
    key = id(tokenizer)
    cached = _NEWLINE_IDS.get(key)
    if cached is None or cached[0] is not tokenizer:
        ids = frozenset(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))
        cached = (tokenizer, ids)
        _NEWLINE_IDS[key] = cached
    return cached[1]


_NEWLINE_IDS: dict[int, tuple[object, frozenset[int]]] = {}


def timed_greedy_decode(model, cache, logits, position, max_new_tokens, stops, **kwargs) -> tuple[list[int], float]:
    """`greedy_decode` and the seconds it took (CUDA work included)."""
    watch = Stopwatch(model)
    with watch.timing():
        ids = greedy_decode(model, cache, logits, position, max_new_tokens, stops, **kwargs)
    return ids, watch.seconds
