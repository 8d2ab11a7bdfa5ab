"""What one layer's KV head holds after each generated token, rebuilt from a run's decode-time evictions.

With a policy's `decode_interval` > 0 the engine records every eviction made while decoding by what it
changed (`GenerationResult.decode_evictions`: the step, the layer and the true positions each head dropped).
Between two evictions the cache only grows: each generated token is fed back and appended. So the cache
after an eviction is the one before it (the prompt's kept tokens plus the appended question and template,
or the previous eviction's result, plus the tokens generated since) without what it dropped, and the cache
after generated token `n` is the latest eviction's result with `step <= n` plus the tokens generated since.

Positions: below `n_context` the prompt's tokens under the budget; then the `n_appended` question and
template tokens; generated token `i` (0-based) is at `n_context + n_appended + i`. The last generated
token is never fed back (decoding stops after choosing it), so at most `n_generated - 1` generated
tokens are ever in the cache.

Pure functions of the result: the Tokens page renders them and the tests check them against the cache the
engine ended with (`GenerationResult.cache_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvcrush.trace import GenerationResult, LayerTrace


def prompt_kept(layer: LayerTrace) -> np.ndarray:
    """`[kv_heads, T]` prompt positions each head kept at compression (all of them in a no-op layer)."""
    if layer.no_op:
        return np.broadcast_to(np.arange(layer.n_tokens), (layer.kept.shape[0], layer.n_tokens))
    return layer.kept.numpy()


@dataclass(frozen=True)
class LayerTimeline:
    """One layer's cache during decoding: its start after the prompt and its evictions, in step order."""

    layer: int
    n_context: int
    n_appended: int
    n_generated: int
    budget: int  # T: prompt tokens per head the layer kept at compression
    interval: int  # k: the policy's decode_interval
    start: np.ndarray  # [kv_heads, T] prompt positions kept at compression
    steps: tuple[int, ...]  # eviction steps
    kept: tuple[np.ndarray, ...]  # [kv_heads, T] positions held right after each eviction

    @property
    def first_generated(self) -> int:
        """Position of generated token 0."""
        return self.n_context + self.n_appended

    def in_cache(self, step: int) -> int:
        """Generated tokens fed back into the cache after `step` generated tokens (the last never is)."""
        return max(0, min(step, self.n_generated - 1))


def timeline(result: GenerationResult, layer: int, interval: int = 0) -> LayerTimeline:
    """One layer's cache over the answer, each eviction's result replayed from the recorded deltas."""
    trace = result.trace
    start = prompt_kept(trace.layers[layer])
    own = sorted((e for e in result.decode_evictions if e.layer == layer), key=lambda e: e.step)
    first_generated = trace.n_context + result.n_appended
    appended = np.arange(trace.n_context, first_generated)
    held = [np.concatenate([row, appended]) for row in start]
    since, kept = 0, []
    for eviction in own:
        generated = np.arange(first_generated + since, first_generated + int(eviction.step))
        dropped = eviction.evicted.numpy()
        held = [np.setdiff1d(np.concatenate([row, generated]), gone, assume_unique=True)
                for row, gone in zip(held, dropped, strict=True)]
        kept.append(np.stack(held))
        since = int(eviction.step)
    return LayerTimeline(layer, trace.n_context, result.n_appended, len(result.new_token_ids),
                         start.shape[1], interval, start, tuple(int(e.step) for e in own), tuple(kept))


def held_positions(line: LayerTimeline, head: int, step: int) -> np.ndarray:
    """Sorted true positions KV head `head` of this layer holds after `step` generated tokens."""
    fed = line.in_cache(step)
    index = int(np.searchsorted(line.steps, fed, side="right")) - 1  # latest eviction with step <= fed
    if index < 0:
        base = np.concatenate([line.start[head], np.arange(line.n_context, line.first_generated)])
        since = 0
    else:
        base, since = line.kept[index][head], line.steps[index]
    generated = np.arange(line.first_generated + since, line.first_generated + fed)
    return np.sort(np.concatenate([np.asarray(base, dtype=np.int64), generated]))


def held_counts(line: LayerTimeline, head: int) -> np.ndarray:
    """Tokens head `head` holds after each step 0..n_generated."""
    return np.array([len(held_positions(line, head, n)) for n in range(line.n_generated + 1)])


def counts_without_eviction(line: LayerTimeline) -> np.ndarray:
    """Tokens per head the cache would hold after each step with decode_interval=0 (computed, not measured):
    T + the appended tokens + the generated tokens fed back."""
    return np.array([line.budget + line.n_appended + line.in_cache(n) for n in range(line.n_generated + 1)])


@dataclass(frozen=True)
class StepView:
    """What one head holds after `step` generated tokens, split by where the tokens came from."""

    step: int
    prompt: np.ndarray  # [n_context] bool: prompt token held
    appended: np.ndarray  # [n_appended] bool
    generated: np.ndarray  # [tokens fed back so far] bool: generated token held

    @property
    def tokens(self) -> int:
        return int(self.prompt.sum() + self.appended.sum() + self.generated.sum())


def step_view(line: LayerTimeline, head: int, step: int) -> StepView:
    held = held_positions(line, head, step)
    prompt = np.zeros(line.n_context, dtype=bool)
    prompt[held[held < line.n_context]] = True
    appended = np.zeros(line.n_appended, dtype=bool)
    tail = held[(held >= line.n_context) & (held < line.first_generated)]
    appended[tail - line.n_context] = True
    generated = np.zeros(line.in_cache(step), dtype=bool)
    generated[held[held >= line.first_generated] - line.first_generated] = True
    return StepView(step, prompt, appended, generated)


def bytes_without_eviction(result: GenerationResult) -> int | None:
    """KV bytes the cache would hold after the answer without decode-time eviction (computed): every layer's
    T + appended + generated tokens fed back, at the bytes per token of the compressed prompt's cache."""
    trace = result.trace
    kept = sum(prompt_kept(layer).shape[1] for layer in trace.layers)
    if not kept or not result.kv_bytes_after:
        return None
    per_token = result.kv_bytes_after / kept  # one token in every layer, keys and values, all KV heads
    grown = result.n_appended + max(0, len(result.new_token_ids) - 1)
    return int(round(per_token * (kept + grown * len(trace.layers))))
