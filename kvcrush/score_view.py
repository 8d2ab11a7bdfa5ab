"""A layer's base scores as a trace shows them, read from the scores the selection was made from.

A selection ranks each KV head's tokens by its policy's scores reduced to KV heads (`reduce_to_kv_heads`).
Those scores are the prepared prompt's (`kvcrush.prepared`, one tensor per layer and scorer, computed once for
any number of selections), so a trace that copied them would hold a second copy per selection: at 16k tokens
with 8 KV heads, 512 KiB per layer and selection. A trace holds a `ScoreView` instead, which points at the
scored tensor (sharing it, not copying it) and reduces the trace's slice when a view asks (`LayerTrace.scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEAD_REDUCTIONS = ("group", "all")


def reduce_to_kv_heads(scores: torch.Tensor, kv_heads: int, head_reduction: str = "group") -> torch.Tensor:
    """`[query_heads or kv_heads, n]` -> `[kv_heads, n]`.

    `"group"` (spec default): the mean over the query heads of each GQA group, so each KV head ranks by its own
    group; scores already per KV head pass unchanged (the same tensor). `"all"`: the mean over every head, the
    same row for every KV head (what kvpress's TOVAPress does).
    """
    if head_reduction == "all":
        return scores.mean(dim=0, keepdim=True).expand(kv_heads, -1).clone()
    if scores.shape[0] == kv_heads:
        return scores
    return scores.reshape(kv_heads, scores.shape[0] // kv_heads, -1).mean(dim=1)


@dataclass(frozen=True)
class ScoreView:
    """`[kv_heads, stop - start]` float32 scores of a trace's middle, computed on demand.

    source: `[query_heads or kv_heads, n]` the scores selection read (shared, on the device they were made on);
    columns `[start, stop)` of their KV-head reduction are the trace's middle.
    """

    source: torch.Tensor
    kv_heads: int
    head_reduction: str
    start: int
    stop: int

    def resolve(self) -> torch.Tensor:
        """The scores on the CPU (a view reads them there; a no-op copy when they already are)."""
        middle = self.source[:, self.start : self.stop].float()
        return reduce_to_kv_heads(middle, self.kv_heads, self.head_reduction).cpu()


__all__ = ["HEAD_REDUCTIONS", "ScoreView", "reduce_to_kv_heads"]
