"""`kvcrush`: a base policy's importance selection plus representatives of what it evicts.

Jha, Gobriel, Talamanova, Jain, "KVCrush: Key value cache size-reduction using similarity in
head-behaviour" (2025), as the project spec (sections 3 and 4) pins it down:

1. `T = sink + recent + T_imp + T_crush`, `T_crush = round(crush_fraction * (T - sink - recent))`.
2. Each KV head keeps its top `T_imp` middle tokens by the base policy's scores.
3. Candidates are the middle tokens that no head kept.
4. Every middle token gets a binary signature over heads (in the top half of that head's scores?).
5-7. Candidates are ordered by Hamming distance to an anchor and evenly spaced picks are kept.
8. The representatives join every head's kept set; budget they do not use returns to step 2.

At block granularity (paged caches) the unit is `block_size` consecutive middle tokens: a block's
score is the sum of its tokens' scores, its signature the token-major concatenation of their bits,
and whole blocks are kept. The `M mod block_size` middle tokens next to the recent window cannot
form a block and stay with the recent window, so every head keeps the same number of tokens,
`sink + recent + (M mod B) + whole blocks <= T`, short of `T` by less than one block.

Beyond the paper (spec section 7; every option off by default, where results are the paper's):
`representative="best"` keeps each bucket's best-scored member; `split="adaptive"` moves each layer's
split by how concentrated its scores are (needs every layer's scores first: `layer_crush_fractions`);
`anchors=k` groups candidates around several anchors (the KVCrush paper's future work), fixed modes or
k-means; `merge="values"` folds each bucket's values into its representative's value row, as CaM
(Zhang et al. 2024) and D2O (Wan et al. 2024) merge evicted entries into kept ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvcrush import crush
from kvcrush.attention import LayerInputs
from kvcrush.budget import BudgetPlan, round_half_up
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.policies.base import MiddleSelection, Policy
from kvcrush.policies.options import option
from kvcrush.policies.snapkv import SnapKV
from kvcrush.quant import KV_BITS, KVStorage, check_bits
from kvcrush.trace import LayerTrace

SIGNATURE_HEADS = ("query", "kv")
GRANULARITIES = ("token", "block")
REPRESENTATIVES = ("spaced", "best")
SPLITS = ("fixed", "adaptive")
MERGES = ("none", "values")
ADAPTIVE_CEILING = 0.9  # spec section 7: a layer's adaptive crush fraction is clipped to [0, 0.9]


@dataclass
class _Grouping:
    """Signatures, anchors, distances, candidates and picks over units (tokens or blocks).

    anchors: `[k, width]`; unit_anchor / distances: `[units]` each unit's nearest anchor and its
    distance to it; bucket_anchor: `[buckets]`; merge: joined `[kv_heads, P]` weights and bucket sizes.
    """

    bits: torch.Tensor
    anchors: torch.Tensor
    unit_anchor: torch.Tensor
    distances: torch.Tensor
    candidates: torch.Tensor
    representatives: torch.Tensor
    buckets: list[torch.Tensor]
    bucket_anchor: torch.Tensor
    merge: tuple[torch.Tensor, list[int]] | None = None

    def trace_fields(self, crush_fraction: float) -> dict[str, Any]:
        """The LayerTrace fields beyond `MiddleSelection`'s own (spec section 7)."""
        extra: dict[str, Any] = {"anchors": self.anchors, "unit_anchor": self.unit_anchor,
                                 "bucket_anchor": self.bucket_anchor, "crush_fraction": float(crush_fraction)}
        if self.merge is not None:
            weights, sizes = self.merge
            extra["merge_weights"] = list(torch.split(weights.to("cpu"), sizes, dim=1))  # one copy, then views
        return extra


@dataclass
class KVCrush(Policy):
    name = "kvcrush"
    help = "A base policy's top tokens plus representatives of the evicted ones, grouped by head signature."
    color = "#D55E00"

    base: Policy = field(default_factory=SnapKV)
    crush_fraction: float = option(0.25, "Share of the evictable budget given to representatives.", minimum=0.0,
                                   maximum=1.0, step=0.05)
    anchor: str = option("alternating", "Reference bits that evicted tokens' signatures are compared with.",
                         choices=crush.ANCHOR_MODES)
    signature_heads: str = option("query", "One signature bit per query head or per KV head.",
                                  choices=SIGNATURE_HEADS)
    granularity: str = option("token", "token, or block: whole blocks of block_size tokens (paged caches).",
                              choices=GRANULARITIES)
    block_size: int = option(16, "Tokens per block at block granularity.", minimum=1, maximum=256)
    seed: int = option(0, "Seed of the random anchor (and of k-means anchors).", minimum=0, maximum=2**31 - 1)
    representative: str = option(
        "spaced", "Beyond the paper: which bucket member stands in for it. spaced: the first in distance order "
        "(the paper); best: the member with the highest base score (mean over KV heads; ties: lower index).",
        choices=REPRESENTATIVES)
    split: str = option(
        "fixed", "Beyond the paper: fixed: every layer gives crush_fraction of its evictable budget to "
        "representatives (the paper); adaptive: layers whose top tokens hold less of the score mass give more "
        "(crush_fraction x (1 - c) / mean over layers of (1 - c), clipped to [0, 0.9]; T unchanged). Needs every "
        "layer's scores, so only a prepared prompt's selection uses it: decode-time eviction re-evicts one layer "
        "at a time with the fixed split, and kvpress hooks (one layer at a time) refuse it.", choices=SPLITS)
    anchors: int = option(
        1, "Beyond the paper (its future work): group evicted tokens around this many anchors; each group gets "
        "representatives in proportion to its size. 1: the paper's single anchor.", minimum=1,
        maximum=crush.MAX_ANCHORS)
    anchor_mode: str = option(
        "fixed", "Beyond the paper: with several anchors, fixed: anchor's mode, then zeros, ones, alternating, "
        "mean, random (skipping it; more random ones past five); kmeans: seeded k-means centroids (Hamming, "
        "majority vote, 10 iterations) of the evicted tokens' signatures.", choices=crush.ANCHOR_SET_MODES)
    merge: str = option(
        "none", "Beyond the paper (after CaM and D2O): values: each representative's value row becomes the "
        "softmax(base score)-weighted sum of its bucket's values, per KV head; keys unchanged, still T rows. "
        "Applied wherever a selection is gathered: the prompt's compression, each decode-time eviction and "
        "kvpress hooks.", choices=MERGES)
    representative_bits: int | None = option(
        None, "Storage bits of the representatives (empty: kv_bits). Fewer bits than kv_bits make each stand-in "
        "cheaper, so with budget_bytes the same bytes keep more of them.", kind=int, choices=(None, *KV_BITS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.base, Policy) or not self.base.evicts or isinstance(self.base, KVCrush):
            raise PolicyError("KVCrush needs an evicting base policy such as snapkv, h2o or tova.")
        if not 0.0 <= float(self.crush_fraction) <= 1.0:
            raise BudgetError(f"crush_fraction must be in [0, 1], got {self.crush_fraction}.")
        if self.anchor not in crush.ANCHOR_MODES:
            raise PolicyError(f"Unknown anchor mode {self.anchor!r}; choose one of {', '.join(crush.ANCHOR_MODES)}.")
        if self.signature_heads not in SIGNATURE_HEADS:
            raise PolicyError(f"signature_heads must be 'query' or 'kv', got {self.signature_heads!r}.")
        if self.granularity not in GRANULARITIES:
            raise PolicyError(f"granularity must be 'token' or 'block', got {self.granularity!r}.")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise BudgetError(f"block_size must be a whole number of tokens >= 1, got {self.block_size!r}.")
        self._check_beyond_paper()
        self.base.budget = self.budget
        self.sink = self.base.sink

    def _check_beyond_paper(self) -> None:
        """Validate the spec section 7 options."""
        for name, allowed in (("representative", REPRESENTATIVES), ("split", SPLITS),
                              ("anchor_mode", crush.ANCHOR_SET_MODES), ("merge", MERGES)):
            if getattr(self, name) not in allowed:
                raise PolicyError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}.")
        if self.representative_bits is not None:
            check_bits(self.representative_bits, "representative_bits")
        if isinstance(self.anchors, bool) or not isinstance(self.anchors, int) \
                or not 1 <= self.anchors <= crush.MAX_ANCHORS:
            raise PolicyError(f"anchors must be a whole number from 1 to {crush.MAX_ANCHORS}, got {self.anchors!r}.")

    # The base decides what matters; KVCrush only changes how the budget is spent.
    def score(self, layer: LayerInputs) -> torch.Tensor:
        return self.base.score(layer)

    def kv_scores(self, scores: torch.Tensor, layer: LayerInputs) -> torch.Tensor:
        return self.base.kv_scores(scores, layer)

    def recent_tokens(self, layer: LayerInputs) -> int:
        return self.base.recent_tokens(layer)

    def layer_budget(self, n_tokens: int, layer_idx: int, n_layers: int) -> int:
        return self.base.layer_budget(n_tokens, layer_idx, n_layers)

    def scorer_key(self) -> tuple:
        return self.base.scorer_key()

    def supports_decode_eviction(self) -> bool:
        return self.base.supports_decode_eviction()

    def scoring_rows(self, n_tokens: int) -> int:
        return self.base.scoring_rows(n_tokens)

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return self.base.query_rows(layer)

    @property
    def chunked_scoring(self) -> bool:  # type: ignore[override]
        return self.base.chunked_scoring

    def crush_fraction_for_plan(self) -> float:
        return float(self.crush_fraction)

    def storage(self) -> KVStorage:
        bits = self.kv_bits if self.representative_bits is None else self.representative_bits
        return KVStorage(kv_bits=self.kv_bits, representative_bits=bits)

    def needs_all_layers(self) -> bool:
        return self.split == "adaptive"

    def layer_crush_fractions(self, per_layer_scores: list[torch.Tensor | None],
                              layers: list[LayerInputs]) -> list[float] | None:
        """`split="adaptive"` (spec section 7): each layer's crush fraction from every layer's scores.

        c = the share of the middle's base-score mass (scores minus each KV head's minimum, summed over
        KV heads) that each head's top `T_imp` tokens hold at the fixed split; the layer's fraction is
        `crush_fraction * (1 - c) / mean over layers of (1 - c)`, clipped to [0, 0.9]. Measured on token
        scores at both granularities (at block level it says how concentrated the layer is just the same).
        Layers that keep everything stay out of the mean. None with the fixed split.
        """
        if self.split != "adaptive":
            return None
        shares: list[torch.Tensor | None] = []
        for scores, layer in zip(per_layer_scores, layers, strict=True):
            plan = self.plan(layer)
            if scores is None or plan.no_op or plan.middle_end <= plan.middle_start:
                shares.append(None)
                continue
            kv_scores = self.kv_scores(scores.float(), layer)[:, plan.middle_start : plan.middle_end]
            shares.append(crush.top_share(kv_scores, plan.importance))
        known = [share for share in shares if share is not None]
        values = iter(torch.stack(known).tolist() if known else [])  # one host sync for every layer
        spreads = [None if share is None else 1.0 - next(values) for share in shares]
        return crush.adaptive_fractions(float(self.crush_fraction), spreads, ADAPTIVE_CEILING)

    def select(self, head_scores: torch.Tensor | None, layer: LayerInputs, budget_tokens: int | None = None,
               crush_fraction: float | None = None) -> LayerTrace:
        """`Policy.select`; `crush_fraction` (from `layer_crush_fractions`) replaces this layer's split.

        Without it (a layer selected alone: decode-time eviction) the fixed `crush_fraction` applies,
        whatever `split` says. The override runs on a copy, so the block path sees it too.
        """
        if crush_fraction is not None and float(crush_fraction) != float(self.crush_fraction):
            layer_policy = dataclasses.replace(self, crush_fraction=float(crush_fraction))
            return layer_policy.select(head_scores, layer, budget_tokens)
        return super().select(head_scores, layer, budget_tokens)

    def select_layers(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                      crush_fractions: list[float] | None = None) -> list[LayerTrace]:
        """`Policy.select_layers`: the paper's configuration is selected for every layer at once.

        With token granularity, one fixed anchor, spaced representatives, no merge and the same budget
        split in every layer, steps 2-8 run on `[layers, ...]` stacks (one sort for every layer's ranking,
        one for every layer's candidates, one host sync) instead of a few dozen small operations per
        layer, which on a CPU cost more than the arithmetic. The traces equal layer-by-layer `select`'s
        (tested). Any other configuration, or a layer with fewer candidates than representatives, goes
        layer by layer.
        """
        traces = self._select_layers_batched(per_layer_scores, layers, crush_fractions)
        return traces if traces is not None else super().select_layers(per_layer_scores, layers, crush_fractions)

    def _select_layers_batched(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                               crush_fractions: list[float] | None) -> list[LayerTrace] | None:
        if (self.granularity != "token" or self.anchors != 1 or self.representative != "spaced"
                or self.merge != "none" or len(layers) < 2 or any(s is None for s in per_layer_scores)):
            return None
        if crush_fractions is not None and len({float(f) for f in crush_fractions}) > 1:
            return None
        fraction = float(self.crush_fraction) if crush_fractions is None else float(crush_fractions[0])
        plans = [self.plan(layer, None, fraction) for layer in layers]
        plan = plans[0]
        if plan.no_op or plan.crush == 0 or any(other != plan for other in plans):
            return None
        start = time.perf_counter()
        lo, hi = plan.middle_start, plan.middle_end
        kv = [self.kv_scores(scores, layer) for scores, layer in zip(per_layer_scores, layers, strict=True)]
        kv_middle = torch.stack([scores[:, lo:hi] for scores in kv])  # [L, kv_heads, M]
        signature_scores = torch.stack([self._signature_scores(k[:, lo:hi], s[:, lo:hi])
                                        for k, s in zip(kv, per_layer_scores, strict=True)]).float()  # [L, Q, M]
        if bool(torch.isnan(signature_scores).any()):  # NaN ranks as signatures() ranks it: layer by layer
            return None
        n_layers, heads, m = kv_middle.shape
        order = torch.argsort(kv_middle, dim=-1, descending=True, stable=True)  # step 2, every head's ranking
        crush_start = time.perf_counter()
        bits = crush.batched_signatures(signature_scores)  # [L, M, Q]
        kept_any = torch.zeros(n_layers, m, dtype=torch.bool, device=bits.device)
        kept_any.scatter_(1, order[:, :, : plan.importance].reshape(n_layers, -1), True)
        candidate = ~kept_any  # step 3
        n_candidates = candidate.sum(dim=-1)
        counts = n_candidates.tolist()  # the one host sync: bucket sizes are needed on the CPU anyway
        if min(counts) < plan.crush:
            return None
        anchors = crush.batched_anchor(bits, self.anchor, self.seed)  # [L, Q], step 5
        distances = (bits ^ anchors[:, None, :]).sum(dim=-1, dtype=torch.int64)  # [L, M], step 6
        index = torch.arange(m, device=bits.device)
        # Step 7's (distance, index) order of each layer's candidates, the other units after them.
        last = torch.full_like(distances, torch.iinfo(torch.int64).max)
        keys = torch.where(candidate, distances * (m + 1) + index, last)
        ordered = torch.argsort(keys, dim=-1)
        steps = n_candidates // plan.crush
        picks = ordered.gather(1, torch.arange(plan.crush, device=bits.device)[None, :] * steps[:, None])
        kept = torch.cat([order[:, :, : plan.importance], picks[:, None, :].expand(n_layers, heads, -1)], dim=2)
        crush_s = time.perf_counter() - crush_start
        # One move to the CPU for every layer, then views.
        kept, bits, anchors, distances = (t.to("cpu") for t in (kept, bits, anchors, distances))
        picks = picks.to("cpu") + lo
        in_order = ordered.to("cpu")[torch.arange(m)[None, :] < n_candidates.to("cpu")[:, None]] + lo
        sizes = [size for count in counts for size in crush.bucket_sizes(count, plan.crush)]
        buckets = torch.split(in_order, sizes)
        candidates = torch.split(candidate.to("cpu").nonzero()[:, 1] + lo, counts)
        unit_anchor = torch.zeros(n_layers, m, dtype=torch.int64)
        bucket_anchor = torch.zeros(plan.crush, dtype=torch.int64)
        share = (time.perf_counter() - start) / n_layers
        traces = []
        for i, layer in enumerate(layers):
            selection = MiddleSelection(
                kept=kept[i], crush_used=plan.crush, signatures=bits[i], anchor=anchors[i], distances=distances[i],
                candidates=candidates[i], representatives=picks[i],
                buckets=list(buckets[i * plan.crush : (i + 1) * plan.crush]), crush_s=crush_s / n_layers,
                absolute=True, trace_fields={"anchors": anchors[i][None], "unit_anchor": unit_anchor[i],
                                             "bucket_anchor": bucket_anchor, "crush_fraction": fraction})
            traces.append(self.layer_trace(layer, plan, kv[i], selection, time.perf_counter() - share))
        return traces

    def _signature_scores(self, kv_scores: torch.Tensor, head_scores: torch.Tensor) -> torch.Tensor:
        """Key-only bases (knorm, random, streaming) score per KV head, so both choices coincide."""
        return kv_scores if self.signature_heads == "kv" else head_scores

    def _group(self, bits: torch.Tensor, kept_units: torch.Tensor, n_units: int, count: int,
               unit_scores: torch.Tensor) -> _Grouping:
        """Steps 3, 5, 6, 7 (and section 7's variants): candidates are units no head kept; pick `count`.

        unit_scores: `[kv_heads, units]` base scores of the units (block scores at block level), read by
        `representative="best"` and `merge="values"` only.
        """
        kept_any = torch.zeros(n_units, dtype=torch.bool, device=bits.device)
        kept_any[kept_units.reshape(-1)] = True
        candidates = (~kept_any).nonzero().flatten()
        anchors = crush.anchor_set(bits, self.anchor_mode, self.anchors, self.seed, self.anchor, candidates)
        unit_anchor, distances = crush.nearest_anchor(bits, anchors)
        picks, groups, bucket_anchor = crush.group_by_anchor(distances, unit_anchor, candidates, count, self.anchors)
        if self.representative == "best":
            picks = crush.best_in_buckets(groups, unit_scores.float().mean(dim=0))
        merge = crush.merge_weights(groups, unit_scores) if self.merge == "values" else None
        return _Grouping(bits, anchors, unit_anchor, distances, candidates, picks, groups, bucket_anchor, merge)

    @staticmethod
    def _fill(order: torch.Tensor, representatives: torch.Tensor, count: int, n_importance: int) -> torch.Tensor:
        """Each head's top `count` units other than the representatives, then the representatives.

        order: `[heads, n]` every unit of each head, best first (the importance step's sort, reused).
        Representatives are candidates, which no head ranked in its top `n_importance`, so up to that
        many the head's own ranking is already the answer; beyond it (fewer candidates than crush
        budget) the representatives are moved behind the rest, which keeps the rest's order.
        """
        heads, n_units = order.shape
        if count > n_importance:
            is_representative = torch.zeros(n_units, dtype=torch.bool, device=order.device)
            is_representative[representatives] = True
            order = order.gather(1, torch.argsort(is_representative[order].byte(), dim=1, stable=True))
        return torch.cat([order[:, :count], representatives.expand(heads, -1)], dim=1)

    def select_middle(
        self, plan: BudgetPlan, middle_kv_scores: torch.Tensor, middle_head_scores: torch.Tensor
    ) -> MiddleSelection:
        if self.granularity == "block":
            return self._select_blocks(plan, middle_kv_scores, middle_head_scores)
        n_middle = middle_kv_scores.shape[1]
        order = crush.stable_top_indices(middle_kv_scores, n_middle)
        start = time.perf_counter()
        bits = crush.signatures(self._signature_scores(middle_kv_scores, middle_head_scores))
        grouping = self._group(bits, order[:, : plan.importance], n_middle, plan.crush, middle_kv_scores)
        picks = grouping.representatives
        kept = self._fill(order, picks, plan.importance + _refund(plan, plan.crush - picks.numel()), plan.importance)
        crush_s = time.perf_counter() - start
        return MiddleSelection(
            kept=kept, crush_used=int(picks.numel()), signatures=bits, anchor=grouping.anchors[0],
            distances=grouping.distances, candidates=grouping.candidates, representatives=picks,
            buckets=grouping.buckets, crush_s=crush_s, trace_fields=grouping.trace_fields(self.crush_fraction),
        )

    def _select_blocks(
        self, plan: BudgetPlan, middle_kv_scores: torch.Tensor, middle_head_scores: torch.Tensor
    ) -> MiddleSelection:
        size = self.block_size
        n_middle = middle_kv_scores.shape[1]
        n_blocks, leftover = divmod(n_middle, size)
        block_tokens = plan.middle_budget - leftover
        if block_tokens < 0:
            raise BudgetError(
                f"Budget {plan.budget} is too small for blocks of {size}: sink ({plan.sink}), recent "
                f"({plan.recent}) and the {leftover} tokens that do not fill a block already need "
                f"{plan.sink + plan.recent + leftover}. Raise the budget or lower the block size."
            )
        n_keep = block_tokens // size
        n_crush = round_half_up(self.crush_fraction * n_keep)
        if plan.representative_cost != 1.0:  # a budget in bytes: the plan's crush tokens are cheaper rows
            if plan.importance < leftover:
                raise BudgetError(f"budget_bytes is too small for blocks of {size}: the {leftover} tokens that do "
                                  "not fill a block need more than the importance share. Raise it or lower the "
                                  "block size.")
            n_crush = plan.crush // size
            n_keep = n_crush + (plan.importance - leftover) // size
        whole = n_blocks * size
        block_scores = middle_kv_scores[:, :whole].reshape(-1, n_blocks, size).sum(dim=-1)
        order = crush.stable_top_indices(block_scores, n_blocks)

        start = time.perf_counter()
        signature_scores = self._signature_scores(middle_kv_scores, middle_head_scores)[:, :whole]
        token_bits = crush.signatures(signature_scores)
        grouping = self._group(crush.block_signatures(token_bits, size), order[:, : n_keep - n_crush], n_blocks,
                               n_crush, block_scores)
        picks = grouping.representatives
        kept_blocks = self._fill(order, picks, n_keep - n_crush + _refund(plan, n_crush - picks.numel()),
                                 n_keep - n_crush)
        device = kept_blocks.device
        kept = (kept_blocks[..., None] * size + torch.arange(size, device=device)).reshape(kept_blocks.shape[0], -1)
        crush_s = time.perf_counter() - start
        starts = torch.arange(n_blocks) * size
        return MiddleSelection(
            kept=kept, crush_used=int(picks.numel()) * size, signatures=token_bits, anchor=grouping.anchors[0],
            distances=grouping.distances, candidates=grouping.candidates, representatives=picks,
            buckets=grouping.buckets, blocks=torch.stack([starts, starts + size], dim=1),
            extra_recent=leftover, crush_s=crush_s, trace_fields=grouping.trace_fields(self.crush_fraction),
        )


def _refund(plan: BudgetPlan, unused: int) -> int:
    """Importance units that representatives' unused budget pays for (one each, or fewer when they are
    stored at fewer bits than importance rows under a budget in bytes)."""
    return int(unused * plan.representative_cost + 1e-9)
