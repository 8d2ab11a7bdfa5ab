"""The one interface every eviction policy shares: score a layer, then common budget and selection code.

A policy file overrides `score()` (and, where its paper says so, the default sink/recent sizes or the
per-layer budget) and declares itself once: `name`, `help`, `color`, its options (`option(...)`
fields, see `kvcrush.policies.options`), which of them change its scores (`scorer_key`), and how many
query rows its scoring attends with at once (`scoring_rows`, read by the memory preflight).
Everything else (budget split, top-k per KV head, trace) lives here, once.

Scoring and selection are separate steps: `score(layer)` depends on the prompt and the scorer only,
`select(head_scores, layer)` on the budget and the selection options, so one prefill's scores serve
any number of selections (`kvcrush.prepare`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from kvcrush.attention import LayerInputs
from kvcrush.budget import BudgetPlan, plan_budget, plan_budget_bytes, resolve_budget, validate_budget
from kvcrush.crush import stable_top_indices
from kvcrush.devices import Stopwatch
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.policies.options import option
from kvcrush.quant import KV_BITS, KVStorage, check_bits
from kvcrush.score_view import HEAD_REDUCTIONS, ScoreView, reduce_to_kv_heads
from kvcrush.trace import LayerTrace, traces_to_host


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
    # The buckets joined (`[P]` members in bucket order) with their sizes, in place of `buckets`: what a selection
    # that has them joined already passes, sparing a split into hundreds of views and a join back.
    joined_buckets: tuple[torch.Tensor, list[int]] | None = None
    blocks: torch.Tensor | None = None
    extra_recent: int = 0
    crush_s: float = 0.0
    absolute: bool = False  # candidates, representatives and buckets are already token positions
    # More `LayerTrace` fields by name, copied onto the trace as given: what a
    # policy records beyond the fields above (KVCrush's anchors and merge weights, spec section 7).
    trace_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Policy:
    """Base class. `budget`: tokens per KV head (int) or share of the prompt (float in (0, 1])."""

    name: ClassVar[str] = "policy"
    help: ClassVar[str] = ""
    color: ClassVar[str] = "#999999"
    evicts: ClassVar[bool] = True
    scorer_name: ClassVar[str | None] = None  # policies sharing a scoring function share this name
    chunked_scoring: ClassVar[bool] = False  # scores in query chunks (memory: see kvcrush.limits)
    kvpress_press: ClassVar[str | None] = None  # NVIDIA kvpress's press with the same scoring idea, if any
    # Whether scores can come from the recent decoded tokens alone (decode-time eviction): not for
    # scorers that need every query of the sequence (H2O).
    decode_eviction: ClassVar[bool] = True

    budget: float | int = 0.25
    sink: int = option(0, "First tokens always kept (attention sinks).", minimum=0, maximum=4096)
    recent: int = option(0, "Last context tokens always kept.", minimum=0, maximum=65536)
    seed: int = 0
    decode_interval: int = option(0, "Decode-time eviction: whenever the cache holds budget + this many tokens "
                                  "per head, evict back to the budget (0: off, compress once after the prompt).",
                                  minimum=0, maximum=4096)
    kv_bits: int = option(16, "Storage of the kept rows: 16 keeps the model's dtype; 8, 4 or 2 store each row as "
                          "integer codes with a float16 scale and zero point per 64 values (the newest 8 rows "
                          "of each layer stay in full precision, KIVI-style); attention dequantizes on the fly.",
                          choices=KV_BITS)
    budget_bytes: int | None = option(None, "Budget in stored bytes per KV head and layer (keys + values, scales "
                                      "and the residual window included), instead of budget: policies of any "
                                      "precision then hold the same bytes. The same for every layer.",
                                      kind=int, minimum=1)

    def __post_init__(self) -> None:
        validate_budget(self.budget)
        check_bits(self.kv_bits)
        if self.budget_bytes is not None and (isinstance(self.budget_bytes, bool)
                                              or not isinstance(self.budget_bytes, int) or self.budget_bytes < 1):
            raise BudgetError(f"budget_bytes must be a whole number of bytes >= 1, got {self.budget_bytes!r}.")
        if self.sink < 0 or (self.recent is not None and self.recent < 0):
            raise BudgetError(f"sink and recent must be >= 0, got sink={self.sink}, recent={self.recent}.")
        if isinstance(self.decode_interval, bool) or not isinstance(self.decode_interval, int) \
                or self.decode_interval < 0:
            raise BudgetError(f"decode_interval must be a whole number of tokens >= 0, got {self.decode_interval!r}.")
        if self.decode_interval and not self.supports_decode_eviction():
            raise PolicyError(f"{self.name} scores need every query of the sequence, so it cannot evict while "
                              "decoding; use decode_interval=0 or a window-scored policy (snapkv, tova, knorm, ...).")
        reduction = getattr(self, "head_reduction", "group")
        if reduction not in HEAD_REDUCTIONS:
            raise PolicyError(f"head_reduction must be 'group' or 'all', got {reduction!r}.")

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

    def storage(self) -> KVStorage:
        """How the compressed cache stores its rows (`kvcrush.quant`): `kv_bits` for every kept row."""
        return KVStorage(kv_bits=self.kv_bits, representative_bits=self.kv_bits)

    def layer_crush_fractions(self, per_layer_scores: list[torch.Tensor | None],
                              layers: list[LayerInputs]) -> list[float] | None:
        """Per-layer crush fractions that depend on every layer's scores (default None: the policy's own).

        A selection that sees every layer at once (`PreparedPrompt.select`) calls this with each layer's
        scores (`[heads, n_context]`, None where the plan is a no-op) before selecting any layer, and
        passes entry i to layer i's `select(..., crush_fraction=...)`. KVCrush's adaptive split
        (spec section 7) is the user. A policy that overrides this should say so in `needs_all_layers`.
        """
        return None

    def needs_all_layers(self) -> bool:
        """Whether selection needs `layer_crush_fractions`, i.e. every layer's scores before any layer.

        True refuses `compress` (one layer alone, as kvpress's hooks call it) rather than silently
        selecting something else than asked. Decode-time eviction re-evicts a layer alone and uses the
        policy's own split (see the policy's option help).
        """
        return False

    def scorer_key(self) -> tuple:
        """What determines `score()`'s output: the scorer's name and the values of its `scorer=True` options.

        Two policies with the same key produce the same scores on the same prompt (PyramidKV and
        SnapKV share one; KVCrush uses its base's), so a prepared prompt computes them once.
        """
        from kvcrush.policies.options import declared_options

        values = tuple((spec.name, getattr(self, spec.name)) for spec in declared_options(self) if spec.scorer)
        return (self.scorer_name or self.name, values)

    def scoring_rows(self, n_tokens: int) -> int:
        """Query rows `score()` attends with at once (0: it reads keys only); sizes the memory preflight."""
        return 0

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        """`[start, end)` of the prompt rows whose queries `score()` reads (empty: keys only).

        A prepared prompt that kept fewer hidden-state rows than this prefills once more to score.
        The default assumes every row, which is always safe.
        """
        return 0, layer.n_context

    # --- common code ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Plain-data description (for traces, CSV rows and the UI)."""
        described: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            described[f.name] = value.describe() if isinstance(value, Policy) else value
        return described

    def kv_scores(self, scores: torch.Tensor, layer: LayerInputs) -> torch.Tensor:
        """Reduce per-query-head scores to `[kv_heads, n]`.

        `head_reduction="group"` (spec default): average the query heads inside each GQA group, so
        each KV head ranks by its own group. `"all"`: average every head of the layer, so all KV heads
        keep the same tokens (what kvpress's TOVAPress does).
        """
        return reduce_to_kv_heads(scores, layer.kv_heads, self.head_reduction_name())

    def head_reduction_name(self) -> str:
        """How `kv_scores` reduces query heads ("group" or "all"; `kvcrush.score_view.reduce_to_kv_heads`)."""
        return getattr(self, "head_reduction", "group")

    def select_middle(
        self, plan: BudgetPlan, middle_kv_scores: torch.Tensor, middle_head_scores: torch.Tensor
    ) -> MiddleSelection:
        """Each KV head keeps its own top `plan.importance` middle tokens (ties: lower index)."""
        return MiddleSelection(kept=stable_top_indices(middle_kv_scores, plan.importance))

    def compress(self, layer: LayerInputs) -> LayerTrace:
        """Score one layer and decide which context tokens each KV head keeps (`score` then `select`).

        The one-layer entry point (kvpress hooks): its trace is moved to the CPU here, and `score_s` waits for
        the device. `select` and `select_layers` leave traces on the layers' devices (`traces_to_host`).
        """
        if self.needs_all_layers():
            raise PolicyError(f"This {self.name} policy's selection needs every layer's scores at once (e.g. "
                              "kvcrush's split='adaptive'), so it cannot compress one layer alone (kvpress "
                              "hooks): use kvcrush.prepare(...).select/generate, or the fixed split.")
        if not self.evicts or self.plan(layer).no_op:
            trace = self.select(None, layer)
            traces_to_host([trace])
            return trace
        watch = Stopwatch(layer.keys.device)  # the time covers the scorer's queued GPU work
        with watch.timing():
            head_scores = self.score(layer).float()
        trace = self.select(head_scores, layer)
        traces_to_host([trace])
        trace.keep_scores()  # nothing else holds this one layer's scores
        trace.score_s = watch.seconds
        return trace

    def supports_decode_eviction(self) -> bool:
        return self.decode_eviction

    def plan(self, layer: LayerInputs, budget_tokens: int | None = None,
             crush_fraction: float | None = None) -> BudgetPlan:
        """This layer's budget split (cheap: no scores needed); `budget_tokens` overrides the policy's budget,
        `crush_fraction` its crush fraction (`layer_crush_fractions`)."""
        if crush_fraction is None:
            crush_fraction = self.crush_fraction_for_plan()
        recent = max(self.recent_tokens(layer), layer.protected_tail)
        if budget_tokens is None and self.budget_bytes is not None:
            return self._plan_bytes(layer, recent, crush_fraction)
        if budget_tokens is None:  # a share of the whole prompt, also on a sliding layer that holds less of it
            budget_tokens = self.layer_budget(layer.n_prompt, layer.layer_idx, layer.n_layers)
        return plan_budget(layer.n_context, budget_tokens, self.layer_sink(layer), recent, crush_fraction)

    def layer_sink(self, layer: LayerInputs) -> int:
        """Sink tokens of this layer: none on a sliding layer that no longer holds the prompt's first tokens."""
        return self.sink if layer.held_offset == 0 else 0

    def _plan_bytes(self, layer: LayerInputs, recent: int, crush_fraction: float) -> BudgetPlan:
        """`budget_bytes`: the split in bytes per KV head at this policy's storage precisions."""
        storage = self.storage()
        dim, size = int(layer.keys.shape[-1]), layer.keys.element_size()
        row = storage.token_bytes(storage.kv_bits, dim, size)
        representative = storage.token_bytes(storage.representative_bits, dim, size)
        full = storage.token_bytes(16, dim, size)
        residual = storage.residual_rows * max(0, full - row) if storage.quantized else 0
        return plan_budget_bytes(layer.n_context, int(self.budget_bytes), self.layer_sink(layer), recent,
                                 crush_fraction, row, representative, residual)

    def select(self, head_scores: torch.Tensor | None, layer: LayerInputs,
               budget_tokens: int | None = None, crush_fraction: float | None = None) -> LayerTrace:
        """Decide the kept tokens of one layer from its scores `[query_heads or kv_heads, n_context]`.

        `head_scores` may be None when the plan is a no-op (budget >= prompt) or the policy never evicts.
        `budget_tokens` overrides the policy's budget for this layer (decode-time eviction);
        `crush_fraction` its split (this layer's entry of `layer_crush_fractions`).
        """
        n_context = layer.n_context
        plan = self.plan(layer, budget_tokens, crush_fraction)
        if plan.no_op or not self.evicts:
            everything = torch.arange(n_context, device=layer.keys.device).expand(layer.kv_heads, n_context).clone()
            return LayerTrace(layer.layer_idx, n_context, n_context, plan.sink, n_context - plan.sink, 0, 0, 0,
                              True, everything, protected=layer.protected_tail)
        start = time.perf_counter()
        kv_scores = self.kv_scores(head_scores, layer)
        lo, hi = plan.middle_start, plan.middle_end
        selection = self.select_middle(plan, kv_scores[:, lo:hi], head_scores[:, lo:hi])
        return self.layer_trace(layer, plan, head_scores, selection, start)

    def select_layers(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                      crush_fractions: list[float] | None = None,
                      budget_tokens: list[int] | None = None) -> list[LayerTrace]:
        """`select` on every layer (`crush_fractions`: `layer_crush_fractions`' output, or None; `budget_tokens`:
        each layer's budget override, as decode-time eviction passes it, or None).

        What a prepared prompt calls once it has every layer's scores; a policy may override it to
        select all layers at once (KVCrush batches its paper configuration over layers, and reads every
        layer's counts with one host sync), with the same traces as layer-by-layer `select`. Traces stay on
        the layers' devices: move them with `kvcrush.trace.traces_to_host`.
        """
        fractions = crush_fractions if crush_fractions is not None else [None] * len(layers)
        budgets = budget_tokens if budget_tokens is not None else [None] * len(layers)
        return [self.select(scores, layer, budget, fraction)
                for scores, layer, fraction, budget in zip(per_layer_scores, layers, fractions, budgets, strict=True)]

    def layer_trace(self, layer: LayerInputs, plan: BudgetPlan, head_scores: torch.Tensor,
                    selection: MiddleSelection, start: float) -> LayerTrace:
        """One layer's trace from its middle selection: sink and recent join every head's kept set.

        head_scores: `[query_heads or kv_heads, n_context]` the scores selection read, which the trace views
        rather than copies (`kvcrush.score_view`); start: `perf_counter()` when this layer's selection began.
        Unit ids in `selection` are relative to the middle unless `selection.absolute` (block ids always are).
        Every tensor stays on the layer's device (no host sync per layer); `select_s` and `crush_s` are host-side
        times that do not wait for the device (`PreparedPrompt.select` times the whole selection, synchronised).
        """
        n_context = layer.n_context
        lo, hi = plan.middle_start, plan.middle_end
        recent = plan.recent + selection.extra_recent
        device = selection.kept.device
        fixed = torch.cat([torch.arange(plan.sink, device=device),
                           torch.arange(n_context - recent, n_context, device=device)])
        kept = torch.cat([fixed.expand(layer.kv_heads, -1), selection.kept + lo], dim=1).sort(dim=1).values
        offset = 0 if selection.blocks is not None or selection.absolute else lo

        def absolute(units: torch.Tensor | None) -> torch.Tensor | None:
            return units if units is None or offset == 0 else units + offset

        trace = LayerTrace(
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
            score_view=ScoreView(head_scores, layer.kv_heads, self.head_reduction_name(), lo,
                                 hi - selection.extra_recent),
            anchor=selection.anchor,
            distances=selection.distances,
            candidates=absolute(selection.candidates),
            representatives=absolute(selection.representatives),
            granularity="block" if selection.blocks is not None else "token",
            block_size=getattr(self, "block_size", 1) if selection.blocks is not None else 1,
            blocks=None if selection.blocks is None else selection.blocks + lo,
            select_s=time.perf_counter() - start,
            crush_s=selection.crush_s,
            protected=layer.protected_tail,
        )
        trace.set_signatures(selection.signatures)
        if selection.joined_buckets is not None:
            trace.set_joined_buckets(*selection.joined_buckets)
        else:
            trace.set_buckets(selection.buckets or [])
        if offset and trace.bucket_members is not None:
            trace.bucket_members = trace.bucket_members + offset
        for name, value in selection.trace_fields.items():
            setattr(trace, name, value)
        return trace
