"""What one benchmark run produced and cost, in the same terms for both engines: `Outcome`.

Our engine's runs become one through `benchmarks.engines.outcome_of` (from `kvcrush.GenerationResult`);
`benchmarks.kvpress_runner` builds one per press run directly. Downstream code (the tasks' scoring,
`benchmarks.quality` records, the overhead and scale tables) reads one type, whichever engine ran. Kept apart
from both producers so the kvpress runner (which needs kvpress installed) and the engine driver import it
without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kvcrush.decoding import ReferenceScores

NAN = float("nan")


@dataclass
class Outcome:
    """One run of one engine on one prompt.

    text / new_token_ids: the greedy answer (empty when only a continuation was scored).
    nll: the reference continuation's mean NLL (nats/token) under teacher forcing, or None when decoding only;
    reference: its per-token scores (`kvcrush.decoding.ReferenceScores`).
    kv_bytes_before / kv_bytes_after: KV bytes of the budgeted context tokens, all layers, keys and values,
    before / after eviction (real tensors, `kvcrush.kvcache.cache_bytes`); kv_fraction is after / before.
    prefill_s: the prefill plus appending the tail (ours: the item's shared prefill, counted in every run as a
    standalone run would pay it; kvpress: its own prefill, scoring and eviction included, i.e. the shared
    forward plus ``hook_s``); ``tail_s`` is the tail's part of it.
    score_s / select_s / crush_s: ours only (NaN for kvpress, whose scoring runs inside its prefill):
    the scorer's cost (``score_reused``: computed by an earlier run on the same prefill, the time is
    what it cost then), selection plus the gather of the kept rows, KVCrush's share of the selection.
    hook_s: kvpress only (NaN for ours): the press's ``compress`` over every layer, inside ``prefill_s``.
    decode_s: greedy decoding only; decode_tokens: tokens it produced.
    kept: ours with ``keep_kept``: per layer ``[kv_heads, n_kept]`` kept context positions.
    kept_per_layer: kvpress: the compressed cache's tokens per layer (PyramidKV's layers differ); ours: empty.
    kept_tokens: ours only (NaN for kvpress): context tokens each KV head keeps, mean over layers.
    budget_bytes: ours with a budget in bytes (equal-bytes specs): that budget per KV head and layer.
    """

    text: str
    new_token_ids: list[int]
    nll: float | None
    kv_bytes_before: int
    kv_bytes_after: int
    prefill_s: float
    score_s: float
    select_s: float
    crush_s: float
    decode_s: float
    decode_tokens: int
    kept: list[torch.Tensor] | None = field(default=None, repr=False)
    prefill_reused: bool = False
    score_reused: bool = False
    reference: ReferenceScores | None = None  # the item's reference ids under teacher forcing
    kept_tokens: float = NAN
    budget_bytes: int | None = None
    kept_per_layer: list[int] = field(default_factory=list)
    tail_s: float = 0.0
    hook_s: float = NAN

    @property
    def kv_fraction(self) -> float:
        return self.kv_bytes_after / self.kv_bytes_before if self.kv_bytes_before else NAN

    @property
    def decode_ms_per_token(self) -> float:
        return 1000.0 * self.decode_s / self.decode_tokens if self.decode_tokens else NAN

    @property
    def policy_s(self) -> float:
        """Everything the policy cost: scoring plus selection (NaN for kvpress)."""
        return self.score_s + self.select_s

    @property
    def e2e_s(self) -> float:
        """End-to-end latency: prefill (and tail) + scoring + selection + decoding (kvpress: prefill + decoding)."""
        policy = 0.0 if math.isnan(self.policy_s) else self.policy_s  # kvpress: inside its prefill
        return self.prefill_s + policy + self.decode_s


def press_outcome(text: str, new_token_ids: list[int], kv_bytes_before: int, kv_bytes_after: int,
                  kept_per_layer: list[int], prefill_s: float, tail_s: float, decode_s: float, hook_s: float,
                  reference: ReferenceScores | None) -> Outcome:
    """A kvpress run as an `Outcome`: `prefill_s` (the compressed prefill, hook included) plus `tail_s` (the
    uncompressed tail) is its ``prefill_s``, as our engine counts it; no separate scoring or selection."""
    return Outcome(
        text=text, new_token_ids=new_token_ids, nll=None if reference is None else reference.nll,
        kv_bytes_before=kv_bytes_before, kv_bytes_after=kv_bytes_after, prefill_s=prefill_s + tail_s, score_s=NAN,
        select_s=NAN, crush_s=NAN, decode_s=decode_s, decode_tokens=len(new_token_ids), reference=reference,
        kept_per_layer=kept_per_layer, tail_s=tail_s, hook_s=hook_s,
    )


__all__ = ["NAN", "Outcome", "press_outcome"]
