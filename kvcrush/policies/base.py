"""The one interface every eviction policy shares: score a layer, then common budget and selection code.

A policy file overrides `score()` (and, where its paper says so, the default sink/recent sizes or the
per-layer budget). Everything else (budget split, top-k per KV head, trace) lives here, once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from kvcrush.attention import LayerInputs
from kvcrush.budget import BudgetPlan, plan_budget, resolve_budget, validate_budget
from kvcrush.crush import stable_top_indices
from kvcrush.errors import BudgetError
from kvcrush.trace import LayerTrace


def _on_cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Traces live on the CPU so the UI and JSON export never touch accelerator memory."""
    return None if tensor is None else tensor.to("cpu")


@dataclass
class MiddleSelection:
    """What a selection step decided over the middle tokens (offsets relative to `middle_start`).

    kept: `[kv_heads, n]` middle offsets kept per head; the other fields feed the trace.
    """

    kept: torch.Tensor
    crush_used: int = 0
    signatures: torch.Tensor | None = None
    anchor: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    representatives: torch.Tensor | None = None
    buckets: list[torch.Tensor] | None = None
    blocks: torch.Tensor | None = None
    extra_recent: int = 0
    crush_s: float = 0.0


@dataclass
class Policy:
    """Base class. `budget`: tokens per KV head (int) or share of the prompt (float in (0, 1])."""

    name: ClassVar[str] = "policy"
    evicts: ClassVar[bool] = True

    budget: float | int = 0.25
    sink: int = 0
    recent: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        validate_budget(self.budget)
        if self.sink < 0 or (self.recent is not None and self.recent < 0):
            raise BudgetError(f"sink and recent must be >= 0, got sink={self.sink}, recent={self.recent}.")

    # --- what a policy file overrides -------------------------------------------------------------
    def score(self, layer: LayerInputs) -> torch.Tensor:
        """Importance of each context token: `[query_heads or kv_heads, n_context]`, higher = keep."""
        raise NotImplementedError

    def recent_tokens(self, layer: LayerInputs) -> int:
        """Context tokens at the end that are always kept."""
        return self.recent

    def layer_budget(self, n_tokens: int, layer_idx: int, n_layers: int) -> int:
        """Tokens each KV head of this layer keeps; uniform across layers unless overridden."""
        return resolve_budget(self.budget, n_tokens)

    def crush_fraction_for_plan(self) -> float:
        return 0.0

    # --- common code ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Plain-data description (for traces, CSV rows and the UI)."""
        described: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            described[f.name] = value.describe() if isinstance(value, Policy) else value
        return described

    def kv_scores(self, scores: torch.Tensor, layer: LayerInputs) -> torch.Tensor:
        """Reduce per-query-head scores to `[kv_heads, n]` by averaging inside each GQA group."""
        if scores.shape[0] == layer.kv_heads:
            return scores
        return scores.reshape(layer.kv_heads, layer.group_size, -1).mean(dim=1)

    def select_middle(
        self, plan: BudgetPlan, middle_kv_scores: torch.Tensor, middle_head_scores: torch.Tensor
    ) -> MiddleSelection:
        """Each KV head keeps its own top `plan.importance` middle tokens (ties: lower index)."""
        return MiddleSelection(kept=stable_top_indices(middle_kv_scores, plan.importance))

    def compress(self, layer: LayerInputs) -> LayerTrace:
        """Score one layer and decide which context tokens each KV head keeps."""
        n_context = layer.n_context
        budget_tokens = self.layer_budget(n_context, layer.layer_idx, layer.n_layers)
        recent = max(self.recent_tokens(layer), layer.protected_tail)
        plan = plan_budget(n_context, budget_tokens, self.sink, recent, self.crush_fraction_for_plan())
        if plan.no_op or not self.evicts:
            everything = torch.arange(n_context).expand(layer.kv_heads, n_context).clone()
            return LayerTrace(layer.layer_idx, n_context, n_context, plan.sink, n_context - plan.sink, 0, 0, 0,
                              True, everything)

        start = time.perf_counter()
        head_scores = self.score(layer).float()
        kv_scores = self.kv_scores(head_scores, layer)
        score_s = time.perf_counter() - start

        start = time.perf_counter()
        lo, hi = plan.middle_start, plan.middle_end
        selection = self.select_middle(plan, kv_scores[:, lo:hi], head_scores[:, lo:hi])
        recent = plan.recent + selection.extra_recent
        fixed = torch.cat([torch.arange(plan.sink), torch.arange(n_context - recent, n_context)])
        middle_kept = selection.kept.to("cpu") + lo
        kept = torch.cat([fixed.expand(layer.kv_heads, -1), middle_kept], dim=1).sort(dim=1).values
        select_s = time.perf_counter() - start

        def absolute(units: torch.Tensor | None) -> torch.Tensor | None:
            if units is None:
                return None
            return units.to("cpu") + (lo if selection.blocks is None else 0)

        return LayerTrace(
            layer=layer.layer_idx,
            n_tokens=n_context,
            budget=plan.budget,
            sink=plan.sink,
            recent=recent,
            importance=plan.importance,
            crush=plan.crush,
            crush_used=selection.crush_used,
            no_op=False,
            kept=kept,
            scores=kv_scores[:, lo : hi - selection.extra_recent].to("cpu"),
            signatures=_on_cpu(selection.signatures),
            anchor=_on_cpu(selection.anchor),
            distances=_on_cpu(selection.distances),
            candidates=absolute(selection.candidates),
            representatives=absolute(selection.representatives),
            buckets=[absolute(b) for b in (selection.buckets or [])],
            granularity="block" if selection.blocks is not None else "token",
            block_size=getattr(self, "block_size", 1) if selection.blocks is not None else 1,
            blocks=None if selection.blocks is None else selection.blocks + lo,
            score_s=score_s,
            select_s=select_s,
            crush_s=selection.crush_s,
        )
