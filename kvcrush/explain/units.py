"""One layer's middle as its selection saw it: units (tokens or blocks), each head's ranking, the buckets.

Everything is read from the layer's trace (`kvcrush.trace.LayerTrace`) and replays only what the
selection itself computed from those values: each KV head's stable descending order of the base
scores (ties: lower index, `kvcrush.crush.stable_top_indices`), and at block level the block scores
as sums of their tokens' scores (spec section 4). Nothing is scored again and no model is needed.

How many units a head keeps by importance (`cutoff`), spec section 3 steps 1-2 and 8, is what KVCrush's
selection recorded (`LayerTrace.importance_kept`, with `importance_units` and `crush_units`): `T_imp` plus the
importance units that the budget the representatives left unused paid for (one each, or fewer under a budget
in bytes when representatives are stored at fewer bits). Traces without that record (other policies, or
traces saved before it existed) derive it from the budget split:
- token level: `T_imp + T_crush - crush_used`;
- block level: `n_keep - picks`, with `n_keep = (T - sink - recent) // B` whole blocks (the tokens that do
  not fill a block are already part of the trace's `recent`).
Candidates are the units outside every head's top `T_imp` (`candidate_cutoff`). When there are fewer
candidates than representatives to pick (`spilled`), every candidate is a representative and each head
fills its importance part in its own order with the representatives left aside, so `rank` then counts
only the units that are not representatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.budget import round_half_up
from kvcrush.crush import stable_top_indices
from kvcrush.trace import LayerTrace


@dataclass
class LayerUnits:
    """The units of one evicting layer and how each KV head ranked them.

    size: tokens per unit (1 at token level). start: the first middle token (`layer.sink`).
    n_units: units ranked (at block level only whole blocks). scores: `[kv_heads, n_units]` float32 unit
    scores (block scores are sums). rank: `[kv_heads, n_units]` int64, 1-based place of each unit in its
    head's order (see the module docstring for `spilled`). cutoff: units each head keeps by importance.
    candidate_cutoff: `T_imp` in units. crush: `T_crush` in units. is_representative: `[n_units]` bool.
    bucket: `[n_units]` int64 index of the bucket holding each unit, -1 for units in none.
    n_representatives: representatives picked.
    """

    layer: LayerTrace
    size: int
    start: int
    n_units: int
    scores: torch.Tensor
    rank: torch.Tensor
    cutoff: int
    candidate_cutoff: int
    crush: int
    is_representative: torch.Tensor
    bucket: torch.Tensor
    n_representatives: int

    @property
    def granularity(self) -> str:
        return self.layer.granularity

    @property
    def spilled(self) -> bool:
        return self.cutoff > self.candidate_cutoff

    @property
    def n_ranked(self) -> int:
        """How many units a rank is out of (the representatives left aside when spilled)."""
        return self.n_units - (self.n_representatives if self.spilled else 0)

    def unit_of(self, position: int) -> int | None:
        """The unit holding token `position`, or None outside the ranked middle."""
        offset = position - self.start
        if offset < 0 or offset >= self.n_units * self.size:
            return None
        return offset // self.size

    def unit_span(self, unit: int) -> tuple[int, int]:
        """`[start, end)` token positions of a unit."""
        first = self.start + unit * self.size
        return first, first + self.size

    def representative_of(self, bucket: int) -> int:
        """The representative unit of bucket `bucket` (buckets and representatives share one order)."""
        return self.unit_id(self.layer.representatives[bucket])

    def unit_id(self, recorded: torch.Tensor | int) -> int:
        """A unit id as the trace records it (an absolute token position, or a block id) to an index here."""
        value = int(recorded)
        return value if self.granularity == "block" else value - self.start

    def order(self, head: int) -> torch.Tensor:
        """`[n_units]` the head's units best first, as `rank` counts them."""
        return torch.argsort(self.rank[head])

    def importance_kept(self, head: int) -> torch.Tensor:
        """`[n_units]` bool: what the head keeps by its own ranking."""
        return (self.rank[head] <= self.cutoff) & ~self.is_representative

    def heads_keeping(self) -> torch.Tensor:
        """`[n_units]` int64: how many heads hold each unit in their top `candidate_cutoff` (spec step 2)."""
        return (ranks(self.scores) <= self.candidate_cutoff).sum(dim=0)

    def candidates(self) -> torch.Tensor:
        """`[n_units]` bool: outside every head's top `candidate_cutoff` (spec step 3)."""
        return self.heads_keeping() == 0


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """`[heads, n]` 1-based place of each entry in its row's stable descending order."""
    heads, n = scores.shape
    order = stable_top_indices(scores, n)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(1, n + 1).expand(heads, n).contiguous())
    return rank


def _fill_ranks(rank: torch.Tensor, is_representative: torch.Tensor) -> torch.Tensor:
    """Places in each head's fill order: its order with the representatives moved behind the rest, keeping
    both parts' order (what `KVCrush._fill` does when candidates are fewer than the crush budget)."""
    heads, n = rank.shape
    order = torch.argsort(rank, dim=1)
    moved = is_representative[order].long()
    before = torch.cumsum(moved, dim=1) - moved  # representatives ahead of each place
    places = torch.arange(1, n + 1).expand(heads, n)
    n_others = n - int(is_representative.sum())
    in_order = torch.where(moved.bool(), n_others + before + 1, places - before)
    return torch.empty_like(rank).scatter_(1, order, in_order)


def _cutoffs(layer: LayerTrace, n_representatives: int) -> tuple[int, int, int]:
    """(units kept by importance per head, `T_imp` and `T_crush` in units): as the selection recorded them
    (KVCrush, `LayerTrace.importance_kept`), else from the layer's budget split (see the module docstring)."""
    if layer.importance_kept is not None:
        return layer.importance_kept, layer.importance_units, layer.crush_units
    if layer.granularity == "block":
        n_keep = (layer.budget - layer.sink - layer.recent) // layer.block_size
        n_crush = round_half_up((layer.crush_fraction or 0.0) * n_keep)
        return n_keep - n_representatives, n_keep - n_crush, n_crush
    return layer.importance + layer.crush - layer.crush_used, layer.importance, layer.crush


def layer_units(layer: LayerTrace) -> LayerUnits | None:
    """The ranked units of an evicting layer; None for a layer that kept everything or recorded no scores."""
    if layer.no_op or layer.scores is None:
        return None
    scores = layer.scores.float()
    size = layer.block_size if layer.granularity == "block" else 1
    n_units = scores.shape[1] // size
    if size > 1:
        scores = scores[:, : n_units * size].reshape(scores.shape[0], n_units, size).sum(dim=-1)
    is_representative = unit_mask(layer, layer.representatives, n_units)
    n_picks = 0 if layer.representatives is None else int(layer.representatives.numel())
    bucket = unit_buckets(layer, n_units)  # from the flat bucket_members / bucket_sizes
    cutoff, candidate_cutoff, crush = _cutoffs(layer, n_picks)
    rank = ranks(scores)
    if cutoff > candidate_cutoff:
        rank = _fill_ranks(rank, is_representative)
    return LayerUnits(layer, size, layer.middle_start, n_units, scores, rank, cutoff, candidate_cutoff, crush,
                      is_representative, bucket, n_picks)


# --- what the trace records per unit, without the scores (the Groups, Signatures and Walk pages' tables) --------
@dataclass
class UnitMarks:
    """What one KVCrush layer recorded about each of its units, read from the trace alone (no scores needed).

    starts / ends: `[n_units]` int64 token span `[start, end)` of each unit. candidate: `[n_units]` bool, outside
    every head's top `T_imp` (the recorded `candidates`). is_representative: `[n_units]` bool (the recorded
    `representatives`). bucket: `[n_units]` int64 bucket of each unit, -1 for units in none (`unit_buckets`).
    kept: `[n_units]` bool, some KV head holds a token of the unit (the recorded kept sets).
    """

    granularity: str
    starts: torch.Tensor
    ends: torch.Tensor
    candidate: torch.Tensor
    is_representative: torch.Tensor
    bucket: torch.Tensor
    kept: torch.Tensor

    @property
    def n_units(self) -> int:
        return int(self.starts.numel())


def unit_offset(layer: LayerTrace) -> int:
    """What to subtract from a recorded unit id to index the layer's units (block ids are indices already)."""
    return 0 if layer.granularity == "block" else layer.middle_start


def unit_buckets(layer: LayerTrace, n_units: int) -> torch.Tensor:
    """`[n_units]` int64 bucket of every unit (-1: in none), from the flat `bucket_members` / `bucket_sizes`."""
    bucket = torch.full((n_units,), -1, dtype=torch.int64)
    if layer.bucket_members is not None and layer.bucket_members.numel():
        bucket[layer.bucket_members.long() - unit_offset(layer)] = layer.member_buckets()
    return bucket


def unit_mask(layer: LayerTrace, units: torch.Tensor | None, n_units: int) -> torch.Tensor:
    """`[n_units]` bool: the recorded unit ids `units` (candidates, representatives) as a mask."""
    mask = torch.zeros(n_units, dtype=torch.bool)
    if units is not None and units.numel():
        mask[units.long() - unit_offset(layer)] = True
    return mask


def unit_marks(layer: LayerTrace) -> UnitMarks | None:
    """Every unit's span, candidacy, bucket, representative and kept flags of a KVCrush layer (one that recorded
    signatures); None otherwise. Vectorised over the units: no per-unit or per-bucket Python loop."""
    if layer.packed_signatures is None or layer.distances is None:
        return None
    if layer.granularity == "block" and layer.blocks is not None:
        starts, ends = layer.blocks[:, 0].long(), layer.blocks[:, 1].long()
    else:
        size = layer.block_size if layer.granularity == "block" else 1
        starts = layer.middle_start + torch.arange(int(layer.packed_signatures.shape[0]) // size) * size
        ends = starts + size
    n_units = int(starts.numel())
    held = torch.zeros(layer.n_tokens + 1, dtype=torch.int64)
    held[1:] = torch.zeros(layer.n_tokens, dtype=torch.int64).index_fill_(0, layer.kept.reshape(-1).long(), 1)
    held = torch.cumsum(held, 0)  # kept tokens (by any head) before each position
    kept = (held[ends] - held[starts]) > 0
    return UnitMarks(layer.granularity, starts, ends, unit_mask(layer, layer.candidates, n_units),
                     unit_mask(layer, layer.representatives, n_units), unit_buckets(layer, n_units), kept)
