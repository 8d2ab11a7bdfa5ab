"""The one decoding loop: extend a (compressed) cache at true positions, decode greedily, score a continuation.

Our engine and the benchmark's kvpress runs both decode with these functions, so a difference between
them is a difference in what the cache holds, never in how it is read. After eviction a cache is
shorter than the sequence: every forward passes `position_ids` (the true positions, for RoPE) while
`cache_position` is left to its default, the cache's real length, which keeps the causal mask right.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from kvcrush.errors import PromptError, RunCancelled
from kvcrush.kvcache import cache_lengths

Progress = Callable[[str, int, int], None]


def stop_ids(model, tokenizer=None) -> set[int]:
    """Token ids that end a greedy answer: the generation config's and the tokenizer's end tokens."""
    stops: set[int] = set()
    sources = [getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    if tokenizer is not None:
        sources.append(tokenizer.eos_token_id)
    for source in sources:
        if isinstance(source, int):
            stops.add(source)
        elif isinstance(source, (list, tuple)):
            stops.update(int(s) for s in source)
    return stops


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so `perf_counter` timings cover it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long, device=device)


def _positions(start: int, count: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, start + count, device=device)[None]


@torch.no_grad()
def extend(model, cache, ids: list[int], start: int, last_only: bool = False) -> torch.Tensor:
    """Feed `ids` at true positions `start...` on top of `cache`; returns their logits `[len(ids) or 1, vocab]`.

    One forward when every layer holds the same number of tokens. When budgets differ per layer
    (PyramidKV) no single causal mask fits all layers, so the tokens go one at a time, which needs none.
    """
    lengths = set(cache_lengths(cache))
    chunks = [ids] if len(lengths) <= 1 else [[token] for token in ids]
    logits, position = [], start
    for i, chunk in enumerate(chunks):
        skip = last_only and i < len(chunks) - 1  # only the very last position's logits are wanted
        output = model(input_ids=_ids(chunk, model.device), past_key_values=cache,
                       position_ids=_positions(position, len(chunk), model.device), use_cache=True,
                       logits_to_keep=1 if last_only else 0)
        if not skip:
            logits.append(output.logits[0].float())
        position += len(chunk)
    return torch.cat(logits)


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
        output = model(input_ids=_ids([token], model.device), past_key_values=cache,
                       position_ids=_positions(position + step, 1, model.device), use_cache=True)
        logits = output.logits[0, -1].float()
        if after_forward is not None:
            after_forward(step + 1)
    return new_ids


@torch.no_grad()
def continuation_nll(model, cache, logits: torch.Tensor, position: int, reference_ids: list[int]) -> float:
    """Mean negative log-likelihood (nats/token) of `reference_ids` under teacher forcing.

    `logits` (`[vocab]`) predict the first reference token; the rest are predicted by forwarding the
    reference (all but its last token) at true positions `position...` on top of `cache`.
    """
    if not reference_ids:
        raise PromptError("The reference continuation is empty.")
    rows = [logits.float().reshape(1, -1)]
    if len(reference_ids) > 1:
        rows.append(extend(model, cache, list(reference_ids[:-1]), position))
    log_probs = torch.log_softmax(torch.cat(rows), dim=-1)
    target = torch.tensor(list(reference_ids), device=log_probs.device)
    return float(-log_probs.gather(1, target[:, None]).mean())


def timed_greedy_decode(model, cache, logits, position, max_new_tokens, stops, **kwargs) -> tuple[list[int], float]:
    """`greedy_decode` and the seconds it took (CUDA work included)."""
    synchronize(model.device)
    start = time.perf_counter()
    ids = greedy_decode(model, cache, logits, position, max_new_tokens, stops, **kwargs)
    synchronize(model.device)
    return ids, time.perf_counter() - start
