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
from kvcrush.devices import Stopwatch
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.host import host_ints, to_device
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
            extra["merge_weight_rows"] = self.merge[0]  # `[kv_heads, P]`, in the buckets' member order
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
        follow = getattr(self.base, "follow_kvcrush", None)
        if follow is not None:  # a press base whose scores read the budget follows the split (kvcrush.policies.press)
            follow(float(self.crush_fraction), self.budget_bytes, self.kv_bits)

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

    def head_reduction_name(self) -> str:
        return self.base.head_reduction_name()

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
        whatever `split` says. The override runs on a copy, so the block path sees it too. One layer alone
        reads its counts on the host (one or two syncs); `select_layers` reads every layer's at once.
        """
        return self._select_units([head_scores], [layer], [crush_fraction], [budget_tokens])[0]

    def select_layers(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                      crush_fractions: list[float] | None = None,
                      budget_tokens: list[int] | None = None) -> list[LayerTrace]:
        """`Policy.select_layers`: every layer at once, with a fixed number of host syncs whatever the depth.

        With token granularity, one fixed anchor, spaced representatives, no merge and the same budget
        split in every layer, steps 2-8 run on `[layers, ...]` stacks (one sort for every layer's ranking,
        one for every layer's candidates) instead of a few dozen small operations per layer, which on a CPU
        cost more than the arithmetic. Any other configuration goes layer by layer, in phases, so that the
        counts the host needs (candidates, group sizes, distinct signatures for k-means) are read for every
        layer at once (`_select_units`). Either way the traces equal one-layer `select`'s (tested) and stay on
        the layers' devices.
        """
        if budget_tokens is None:
            traces = self._select_layers_batched(per_layer_scores, layers, crush_fractions)
            if traces is not None:
                return traces
        fractions = crush_fractions if crush_fractions is not None else [None] * len(layers)
        budgets = budget_tokens if budget_tokens is not None else [None] * len(layers)
        return self._select_units(per_layer_scores, layers, fractions, budgets)

    def _select_layers_batched(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                               crush_fractions: list[float] | None) -> list[LayerTrace] | None:
        if (self.granularity != "token" or self.anchors != 1 or self.representative != "spaced"
                or self.merge != "none" or len(layers) < 2 or any(s is None for s in per_layer_scores)):
            return None
        if crush_fractions is not None and len({float(f) for f in crush_fractions}) > 1:
            return None
        if len({layer.keys.device for layer in layers}) > 1:  # a sharded model: stacks need one device
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
        n_layers, heads, m = kv_middle.shape
        order = torch.argsort(kv_middle, dim=-1, descending=True, stable=True)  # step 2, every head's ranking
        watch = Stopwatch(layers[0].keys.device)  # crush_s covers KVCrush's own device work
        with watch.timing():
            bits = crush.batched_signatures(signature_scores)  # [L, M, Q]
            kept_any = torch.zeros(n_layers, m, dtype=torch.bool, device=bits.device)
            kept_any.scatter_(1, order[:, :, : plan.importance].reshape(n_layers, -1), True)
            candidate = ~kept_any  # step 3
            n_candidates = candidate.sum(dim=-1)
            counts = host_ints([n_candidates])[0]  # the one host sync: bucket sizes are Python ints
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
            ascending = torch.sort(torch.where(candidate, index, m), dim=-1).values + lo  # every layer's F, sorted
            in_order = ordered + lo
        crush_s = watch.seconds
        unit_anchor = torch.zeros(m, dtype=torch.int64, device=bits.device)
        bucket_anchor = torch.zeros(plan.crush, dtype=torch.int64, device=bits.device)
        share = (time.perf_counter() - start) / n_layers
        traces = []
        for i, layer in enumerate(layers):
            selection = MiddleSelection(
                kept=kept[i], crush_used=plan.crush, signatures=bits[i], anchor=anchors[i], distances=distances[i],
                candidates=ascending[i, : counts[i]], representatives=picks[i] + lo,
                joined_buckets=(in_order[i, : counts[i]], crush.bucket_sizes(counts[i], plan.crush)),
                crush_s=crush_s / n_layers, absolute=True,
                trace_fields={"anchors": anchors[i][None], "unit_anchor": unit_anchor,
                              "bucket_anchor": bucket_anchor, "crush_fraction": fraction,
                              **_cutoffs(plan.importance, plan.crush, plan.importance)})
            traces.append(self.layer_trace(layer, plan, per_layer_scores[i], selection, time.perf_counter() - share))
        return traces

    def _signature_scores(self, kv_scores: torch.Tensor, head_scores: torch.Tensor) -> torch.Tensor:
        """Key-only bases (knorm, random, streaming) score per KV head, so both choices coincide."""
        return kv_scores if self.signature_heads == "kv" else head_scores

    def _select_units(self, per_layer_scores: list[torch.Tensor | None], layers: list[LayerInputs],
                      crush_fractions: list[float | None], budget_tokens: list[int | None]) -> list[LayerTrace]:
        """Every layer's selection in phases, so that the host reads every layer's counts at once.

        1. Per layer, on its device: the importance ranking, the units (tokens or blocks), their signatures,
           the candidates and, with fixed anchors, the anchors and distances (`_Units`).
        2. One read of every layer's candidate count (and group sizes, and distinct signatures for k-means).
        3. k-means only: the centroids of every layer, then one read of every layer's group sizes.
        4. Per layer, on its device: representatives, buckets, the refill of the importance part, the trace.
        `crush_s` of the run (the sum over layers) is the synchronised time of steps 1-4's KVCrush work; each
        layer's share is in proportion to its host-side time.
        """
        traces: list[LayerTrace | None] = [None] * len(layers)
        units: list[_Units] = []
        for i, (scores, layer, fraction, budget) in enumerate(
                zip(per_layer_scores, layers, crush_fractions, budget_tokens, strict=True)):
            policy = self if fraction is None or float(fraction) == float(self.crush_fraction) \
                else dataclasses.replace(self, crush_fraction=float(fraction))
            plan = policy.plan(layer, budget)
            if plan.no_op or scores is None:
                traces[i] = Policy.select(policy, scores, layer, budget)
            else:
                units.append(policy._ranked_units(i, layer, plan, scores))
        if not units:
            return traces  # type: ignore[return-value]
        watch = Stopwatch({u.layer.keys.device for u in units})
        with watch.timing():
            for u in units:
                u.policy._find_candidates(u)
            kmeans = self.anchor_mode == "kmeans" and self.anchors > 1
            read = [u.n_candidates for u in units]
            read += [u.distinct.count for u in units] if kmeans else [u.sizes for u in units if self.anchors > 1]
            values = host_ints(read)
            counts = [v[0] for v in values[: len(units)]]
            if kmeans:
                seeds = to_device([crush.kmeans_seeds(v[0], self.anchors, self.seed) for v in values[len(units):]],
                                  [u.bits.device for u in units])
                for u, seed in zip(units, seeds, strict=True):
                    u.policy._kmeans(u, seed)
                sizes = host_ints([u.sizes for u in units])
            elif self.anchors > 1:
                sizes = values[len(units):]
            else:
                sizes = [[count] for count in counts]
            for u, count, group_sizes in zip(units, counts, sizes, strict=True):
                traces[u.index] = u.policy._finish(u, count, group_sizes)
        crush_s = watch.seconds
        host_total = sum(u.crush_s for u in units)
        for u in units:
            trace = traces[u.index]
            trace.crush_s = crush_s * (u.crush_s / host_total if host_total > 0 else 1.0 / len(units))
        return traces  # type: ignore[return-value]

    def _ranked_units(self, index: int, layer: LayerInputs, plan: BudgetPlan, head_scores: torch.Tensor) -> _Units:
        """Phase 1 before KVCrush's own work: scores per KV head and each head's ranking of the units."""
        start = time.perf_counter()
        kv_scores = self.kv_scores(head_scores, layer)
        lo, hi = plan.middle_start, plan.middle_end
        middle_kv, middle_heads = kv_scores[:, lo:hi], head_scores[:, lo:hi]
        n_middle = middle_kv.shape[1]
        signature_scores = self._signature_scores(middle_kv, middle_heads)
        if self.granularity != "block":
            order = crush.stable_top_indices(middle_kv, n_middle)
            return _Units(index, layer, self, plan, head_scores, start, order, middle_kv, signature_scores,
                          plan.importance, plan.crush)
        size = self.block_size
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
        block_scores = middle_kv[:, :whole].reshape(-1, n_blocks, size).sum(dim=-1)
        order = crush.stable_top_indices(block_scores, n_blocks)
        return _Units(index, layer, self, plan, head_scores, start, order, block_scores, signature_scores[:, :whole],
                      n_keep - n_crush, n_crush, leftover)

    def _find_candidates(self, u: _Units) -> None:
        """Steps 3-6 on the device: signatures, candidates (units no head kept), anchors and distances."""
        started = time.perf_counter()
        u.token_bits = crush.signatures(u.signature_scores)
        u.bits = u.token_bits if self.granularity != "block" else crush.block_signatures(u.token_bits,
                                                                                         self.block_size)
        n_units = u.order.shape[1]
        kept_any = torch.zeros(n_units, dtype=torch.bool, device=u.bits.device)
        kept_any[u.order[:, : u.n_importance].reshape(-1)] = True
        u.candidate = ~kept_any
        u.n_candidates = u.candidate.sum()
        if self.anchor_mode == "kmeans" and self.anchors > 1:
            u.distinct = crush.distinct_signatures(u.bits, u.candidate)
        else:
            self._nearest(u, crush.fixed_anchors(u.bits, self.anchors, self.anchor, self.seed))
        u.crush_s += time.perf_counter() - started

    def _kmeans(self, u: _Units, seeds: torch.Tensor) -> None:
        """k-means anchors over the candidates' signatures, started from the distinct ones ranked `seeds`."""
        started = time.perf_counter()
        self._nearest(u, crush.kmeans_from(u.bits, u.candidate, u.distinct, seeds))
        u.crush_s += time.perf_counter() - started

    def _nearest(self, u: _Units, anchors: torch.Tensor) -> None:
        u.anchors = anchors
        u.unit_anchor, u.distances = crush.nearest_anchor(u.bits, anchors)
        if self.anchors > 1:
            u.sizes = crush.group_sizes(u.unit_anchor, u.candidate, self.anchors)

    def _finish(self, u: _Units, n_candidates: int, sizes: list[int]) -> LayerTrace:
        """Steps 7-8 from the host counts: representatives and buckets per group, the refill, the trace."""
        started = time.perf_counter()
        several = self.anchors > 1
        ordered = crush.order_candidates(u.distances, u.candidate, u.unit_anchor if several else None)
        ordered = ordered[:n_candidates]
        picks, buckets, segment, owners = crush.spaced_groups(ordered, sizes, crush.share_out(sizes, u.n_crush))
        if self.representative == "best":
            picks = crush.best_in_buckets(buckets, u.unit_scores.float().mean(dim=0), segment)
        merge = crush.merge_weights(buckets, u.unit_scores, segment) if self.merge == "values" else None
        plan = u.plan
        count = u.n_importance + _refund(plan, u.n_crush - picks.numel())
        kept = self._fill(u.order, picks, count, u.n_importance)
        n_units = u.order.shape[1]
        candidates = torch.sort(torch.where(u.candidate, torch.arange(n_units, device=ordered.device), n_units)
                                ).values[:n_candidates]
        grouping = _Grouping(u.bits, u.anchors, u.unit_anchor, u.distances, candidates, picks, buckets,
                             torch.tensor(owners, dtype=torch.int64, device="cpu"), merge)
        blocks = None
        crush_used = int(picks.numel())
        if self.granularity == "block":
            size = self.block_size
            kept = (kept[..., None] * size + torch.arange(size, device=kept.device)).reshape(kept.shape[0], -1)
            starts = torch.arange(n_units, device=kept.device) * size
            blocks = torch.stack([starts, starts + size], dim=1)
            crush_used *= size
        u.crush_s += time.perf_counter() - started
        selection = MiddleSelection(
            kept=kept, crush_used=crush_used, signatures=u.token_bits, anchor=u.anchors[0], distances=u.distances,
            candidates=candidates, representatives=picks, buckets=buckets, blocks=blocks, extra_recent=u.leftover,
            crush_s=u.crush_s,
            trace_fields={**grouping.trace_fields(self.crush_fraction), **_cutoffs(u.n_importance, u.n_crush, count)},
        )
        return self.layer_trace(u.layer, plan, u.head_scores, selection, u.start)

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


@dataclass
class _Units:
    """One layer's selection between its phases (`KVCrush._select_units`), on the layer's device.

    head_scores: `[query_heads or kv_heads, n_context]` the layer's scores as selection received them; order:
    `[kv_heads, units]` each head's ranking of the units (middle tokens, or whole blocks); unit_scores:
    `[kv_heads, units]` their base scores; signature_scores: `[heads, tokens]` the scores signatures are made
    of; n_importance / n_crush: units each head keeps by importance / representatives wanted; leftover:
    middle tokens next to the recent window that fill no block. Set later: token_bits `[tokens, heads]`, bits
    `[units, width]`, candidate `[units]` bool, n_candidates (0-d), anchors `[k, width]`, unit_anchor and
    distances `[units]`, sizes `[k]` candidates per anchor, distinct (k-means), crush_s (host seconds).
    """

    index: int
    layer: LayerInputs
    policy: KVCrush
    plan: BudgetPlan
    head_scores: torch.Tensor
    start: float
    order: torch.Tensor
    unit_scores: torch.Tensor
    signature_scores: torch.Tensor
    n_importance: int
    n_crush: int
    leftover: int = 0
    token_bits: torch.Tensor | None = None
    bits: torch.Tensor | None = None
    candidate: torch.Tensor | None = None
    n_candidates: torch.Tensor | None = None
    anchors: torch.Tensor | None = None
    unit_anchor: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    distinct: crush.DistinctSignatures | None = None
    crush_s: float = 0.0


def _cutoffs(importance_units: int, crush_units: int, importance_kept: int) -> dict[str, int]:
    """The cut-offs a selection used, as `LayerTrace` fields (the explainer reads them, never re-derives them)."""
    return {"importance_units": int(importance_units), "crush_units": int(crush_units),
            "importance_kept": int(importance_kept)}


def _refund(plan: BudgetPlan, unused: int) -> int:
    """Importance units that representatives' unused budget pays for (one each, or fewer when they are
    stored at fewer bits than importance rows under a budget in bytes)."""
    return int(unused * plan.representative_cost + 1e-9)
