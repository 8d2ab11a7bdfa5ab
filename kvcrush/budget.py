"""Budget rules (spec section 1 and section 3, step 1).

The budget `T` is the number of tokens each KV head of each layer keeps, counted *including* sink,
recent and KVCrush tokens, so two policies with the same budget hold the same number of bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvcrush.errors import BudgetError


def parse_budget(text: str | float | int) -> float | int:
    """Read a budget as people type it: `0.25`, `25%` (fractions) or `512` (tokens)."""
    if isinstance(text, bool):
        raise BudgetError("Budget must be a number, not a boolean.")
    if isinstance(text, (int, float)):
        return validate_budget(text)
    raw = str(text).strip()
    if not raw:
        raise BudgetError("Budget is empty: give a fraction like 0.25, a percentage like 25% or a token count.")
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1].strip() if percent else raw)
    except ValueError:
        raise BudgetError(f"Budget {raw!r} is not a number: use 0.25, 25% or a token count like 512.") from None
    if percent:
        if math.isfinite(value) and not 0.0 < value <= 100.0:
            raise BudgetError(f"A percentage budget must be in (0%, 100%], got {raw}.")
        return validate_budget(value / 100.0)
    if value.is_integer() and value > 1 and "." not in raw:
        return validate_budget(int(value))
    return validate_budget(value)


def validate_budget(budget: float | int) -> float | int:
    """Check a budget's range without knowing the prompt length; returns it unchanged."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise BudgetError(f"Budget must be a fraction in (0, 1] or a whole number of tokens, got {budget!r}.")
    if isinstance(budget, float) and not math.isfinite(budget):
        raise BudgetError(f"Budget must be finite, got {budget}.")
    if isinstance(budget, int):
        if budget < 1:
            raise BudgetError(f"A token budget must be at least 1, got {budget}.")
        return budget
    if budget <= 0.0:
        raise BudgetError(
            f"A budget must be positive: a fraction in (0, 1] like 0.25 or a token count like 512, got {budget:g}."
        )
    if not 0.0 < budget <= 1.0:
        raise BudgetError(
            f"A fractional budget must be in (0, 1] (a share of the prompt), got {budget}; "
            "pass an integer for a token count."
        )
    return budget


def resolve_budget(budget: float | int, n_tokens: int) -> int:
    """Tokens per KV head: a fraction means `ceil(fraction * N)`, never below 1; may exceed N (no-op)."""
    validate_budget(budget)
    if isinstance(budget, int):
        return budget
    return max(1, math.ceil(budget * n_tokens - 1e-9))


def round_half_up(value: float) -> int:
    """Deterministic rounding for budget splits (Python's `round` rounds halves to even)."""
    return int(math.floor(value + 0.5))


@dataclass(frozen=True)
class BudgetPlan:
    """How one layer's budget `T` splits into `sink + recent + importance + crush`.

    `sink` and `recent` are clipped so they never exceed `T` (sink first); `crush` is
    `round(crush_fraction * (T - sink - recent))`; `no_op` is set when `T >= N`.
    """

    n_tokens: int
    budget: int
    sink: int
    recent: int
    importance: int
    crush: int
    no_op: bool
    # Budgets in bytes (`plan_budget_bytes`): what one representative row costs in importance rows (a
    # representative stored at fewer bits is cheaper), so budget a selection leaves unused returns at that rate.
    representative_cost: float = 1.0

    @property
    def middle_start(self) -> int:
        return self.sink

    @property
    def middle_end(self) -> int:
        return self.n_tokens - self.recent

    @property
    def middle_budget(self) -> int:
        return self.importance + self.crush


def plan_budget(n_tokens: int, budget_tokens: int, sink: int, recent: int, crush_fraction: float = 0.0) -> BudgetPlan:
    """Split `budget_tokens` for a layer of `n_tokens` (spec section 3, step 1)."""
    if not 0.0 <= crush_fraction <= 1.0:
        raise BudgetError(f"crush_fraction must be in [0, 1], got {crush_fraction}.")
    if sink < 0 or recent < 0:
        raise BudgetError(f"sink and recent must be >= 0, got sink={sink}, recent={recent}.")
    if budget_tokens >= n_tokens:
        keep_sink = min(sink, n_tokens)
        return BudgetPlan(n_tokens, n_tokens, keep_sink, n_tokens - keep_sink, 0, 0, True)
    keep_sink = min(sink, budget_tokens)
    keep_recent = min(recent, budget_tokens - keep_sink)
    middle = budget_tokens - keep_sink - keep_recent
    crush = round_half_up(crush_fraction * middle)
    return BudgetPlan(n_tokens, budget_tokens, keep_sink, keep_recent, middle - crush, crush, False)


def plan_budget_bytes(n_tokens: int, budget_bytes: int, sink: int, recent: int, crush_fraction: float,
                      row_bytes: int, representative_row_bytes: int, residual_extra: int = 0) -> BudgetPlan:
    """Split a budget in bytes per KV head (keys + values) for a layer of `n_tokens` (spec section 1, in bytes).

    Sink and recent tokens and the importance part cost `row_bytes` per token, representatives
    `representative_row_bytes`; `residual_extra` is what the full-precision residual window adds on top
    (`kvcrush.quant`). The middle's bytes split by `crush_fraction` as tokens do in `plan_budget`, so a
    policy whose representatives are stored at fewer bits keeps more of them in the same bytes.
    """
    if not 0.0 <= crush_fraction <= 1.0:
        raise BudgetError(f"crush_fraction must be in [0, 1], got {crush_fraction}.")
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
        raise BudgetError(f"budget_bytes must be a whole number of bytes >= 1, got {budget_bytes!r}.")
    available = budget_bytes - residual_extra
    if available >= n_tokens * row_bytes:
        return plan_budget(n_tokens, n_tokens, sink, recent)
    fixed = min(sink + recent, n_tokens)
    if available < row_bytes:
        raise BudgetError(f"budget_bytes={budget_bytes} holds less than one token at {row_bytes} bytes (plus "
                          f"{residual_extra} for the residual window); raise it.")
    if available < fixed * row_bytes:  # as `plan_budget` does: sink and recent are clipped to what fits
        return plan_budget(n_tokens, int(available // row_bytes), sink, recent)
    middle_bytes = available - fixed * row_bytes
    crush = int(round_half_up(crush_fraction * middle_bytes) // representative_row_bytes)
    importance = int((middle_bytes - crush * representative_row_bytes) // row_bytes)
    if fixed + importance + crush >= n_tokens:
        # Cheap representatives would buy more rows than the prompt has, but keeping every row stores them
        # all at `row_bytes`, which does not fit: keep all but one, as many as fit at `row_bytes`.
        rows = n_tokens - 1 - fixed
        importance = min(rows, max(0, (middle_bytes - rows * representative_row_bytes)
                                   // (row_bytes - representative_row_bytes)))
        crush = rows - importance
    plan = plan_budget(n_tokens, fixed + importance + crush, sink, recent)
    return BudgetPlan(n_tokens, plan.budget, plan.sink, plan.recent, importance, crush, False,
                      representative_row_bytes / row_bytes)
