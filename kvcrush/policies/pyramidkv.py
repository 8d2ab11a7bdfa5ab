"""`pyramidkv`: SnapKV scores with budgets that shrink linearly from lower to upper layers.

Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
(2024). Lower layers spread attention widely and get more tokens, upper layers concentrate and get
fewer; the budgets form an arithmetic sequence whose largest/smallest ratio is `beta` and whose sum
equals the uniform total (capped at the prompt length, with the excess moved to other layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from kvcrush.budget import resolve_budget
from kvcrush.errors import PolicyError
from kvcrush.policies.options import option
from kvcrush.policies.snapkv import SnapKV


@lru_cache(maxsize=256)
def pyramid_budgets(average: int, n_layers: int, n_tokens: int, beta: float) -> tuple[int, ...]:
    """Integer per-layer budgets, decreasing with depth, summing to `min(average, N) * n_layers`."""
    total = min(average, n_tokens) * n_layers
    if n_layers == 1:
        return (min(average, n_tokens),)
    slope = (beta - 1.0) / (beta + 1.0)
    weights = [1.0 + slope * (1.0 - 2.0 * i / (n_layers - 1)) for i in range(n_layers)]
    low, high = 0.0, float(n_tokens) / min(weights) + 1.0
    for _ in range(100):  # water-filling: scale so that the capped budgets add up to the total
        scale = (low + high) / 2
        if sum(min(n_tokens, scale * w) for w in weights) < total:
            low = scale
        else:
            high = scale
    ideal = [min(float(n_tokens), high * w) for w in weights]
    budgets = [max(1, int(x)) for x in ideal]
    by_remainder = sorted(range(n_layers), key=lambda i: (budgets[i] - ideal[i], i))
    for i in by_remainder:
        if sum(budgets) >= total:
            break
        if budgets[i] < n_tokens:
            budgets[i] += 1
    return tuple(budgets)


@dataclass
class PyramidKV(SnapKV):
    name = "pyramidkv"
    help = "SnapKV scores with budgets shrinking from lower to upper layers (same total memory)."
    color = "#56B4E9"
    kvpress_press = None  # the benchmark runs no kvpress PyramidKV press
    scorer_name = "snapkv"  # the same scores as SnapKV: a prepared prompt computes them once for both

    beta: float = option(20.0, "Largest / smallest layer budget.", minimum=1.0, maximum=100.0, step=1.0)

    def __post_init__(self) -> None:
        if self.beta < 1:
            raise PolicyError(f"beta (largest/smallest layer budget) must be >= 1, got {self.beta}.")
        super().__post_init__()

    def layer_budget(self, n_tokens: int, layer_idx: int, n_layers: int) -> int:
        average = resolve_budget(self.budget, n_tokens)
        if average >= n_tokens:
            return average
        return pyramid_budgets(average, n_layers, n_tokens, float(self.beta))[layer_idx]
