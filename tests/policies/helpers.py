"""Policies whose scores a test supplies, and a plain-Python reference of spec section 3."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class GivenScores(Policy):
    """Returns `scores` (`[heads, n_context]`) whatever the layer; selection is the real common code."""

    name = "given"
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 1))

    def score(self, layer: LayerInputs) -> torch.Tensor:
        return self.scores


def reference_kvcrush(kv_scores, head_scores, budget, sink, recent, crush_fraction, anchor_bits):
    """Spec section 3 written as directly as possible with Python lists (an independent oracle).

    kv_scores `[kv_heads][N]`, head_scores `[H][N]` (rows of floats), anchor_bits list of H ints.
    Returns (kept per head as sorted lists, representatives in pick order).
    """
    n = len(kv_scores[0])
    sink = min(sink, budget)
    recent = min(recent, budget - sink)
    middle = list(range(sink, n - recent))
    middle_budget = budget - sink - recent
    t_crush = math.floor(crush_fraction * middle_budget + 0.5)
    t_imp = middle_budget - t_crush

    def top(row, count, allowed):
        ranked = sorted(allowed, key=lambda t: (-row[t], t))
        return ranked[:count]

    importance = [top(row, t_imp, middle) for row in kv_scores]
    kept_any = {t for head in importance for t in head}
    candidates = [t for t in middle if t not in kept_any]
    half = len(middle) // 2
    bits = {t: [0] * len(head_scores) for t in middle}
    for h, row in enumerate(head_scores):
        for t in top(row, half, middle):
            bits[t][h] = 1
    distance = {t: sum(b != a for b, a in zip(bits[t], anchor_bits, strict=True)) for t in middle}
    ordered = sorted(candidates, key=lambda t: (distance[t], t))
    k = min(len(ordered), t_crush)
    picks = [ordered[i * (len(ordered) // k)] for i in range(k)] if k else []
    fill = middle_budget - len(picks)
    kept = []
    for row in kv_scores:
        chosen = top(row, fill, [t for t in middle if t not in picks]) + picks
        kept.append(sorted(list(range(sink)) + chosen + list(range(n - recent, n))))
    return kept, picks


def random_scores(heads: int, n: int, seed: int, ties: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 4, (heads, n), generator=generator).float()
    return torch.rand(heads, n, generator=generator)
