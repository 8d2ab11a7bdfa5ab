"""Follow a span: what every layer and KV head did with prompt tokens `[start, end)`.

A compressed answer often comes out almost right because one digit of the needle was lost in a few
layers and heads (spec section 6). `span_fate` reads a run's trace and says, per layer and KV head,
whether the span was all kept, partly kept, evicted with only a KVCrush representative standing in
for it, or evicted, with per-token detail. Nothing is recomputed: statuses come from
`LayerTrace.token_status` and the stand-ins from the recorded buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.errors import KVCrushError
from kvcrush.trace import EVICTED, IMPORTANT, PROTECTED, SINK, STATUS_NAMES, LayerTrace, RunTrace

# Fate of a span in one (layer, KV head), in legend order.
ALL_KEPT, PARTLY_KEPT, REPRESENTED, EVICTED_SPAN = range(4)
FATE_NAMES = ("all kept", "partly kept", "evicted, a representative stands in", "evicted")


@dataclass
class LostAt:
    """One layer and KV head that did not keep every token of the span.

    missing: positions it evicted. stood_in: those of them whose bucket's KVCrush representative is kept
    (`representatives[i]` stands in for `stood_in[i]`).
    """

    layer: int
    head: int
    fate: int
    missing: list[int]
    stood_in: list[int]
    representatives: list[int]


@dataclass
class SpanFate:
    """What a run did with prompt tokens `[start, end)` in every layer and KV head.

    codes: `[layers, kv_heads]` int8 fate (`FATE_NAMES`). status: `[layers, kv_heads, n]` int8 status of
    each span token (`kvcrush.trace.STATUS_NAMES`; a layer that kept everything reads as kept).
    stand_in: `[layers, n]` int64 first token position of the KVCrush representative standing in for
    each token's bucket (-1: the token is in no bucket). represented: `[layers, kv_heads, n]` bool, the head
    evicted the token and a representative stands in for it.
    """

    start: int
    end: int
    tokens: list[str]
    codes: torch.Tensor
    status: torch.Tensor
    stand_in: torch.Tensor
    represented: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def kept(self) -> torch.Tensor:
        """`[layers, kv_heads, n]` bool."""
        return self.status != EVICTED

    def counts(self) -> dict[str, int]:
        """(layer, KV head) pairs per fate, in `FATE_NAMES` order."""
        found = torch.bincount(self.codes.flatten().long(), minlength=len(FATE_NAMES)).tolist()
        return dict(zip(FATE_NAMES, found, strict=True))

    def lost(self) -> list[LostAt]:
        """Every (layer, KV head) that evicted at least one token of the span, layer by layer."""
        out = []
        for layer, head in (self.codes != ALL_KEPT).nonzero().tolist():
            evicted = (~self.kept[layer, head]).nonzero().flatten().tolist()
            stood = [i for i in evicted if bool(self.represented[layer, head, i])]
            out.append(LostAt(layer, head, int(self.codes[layer, head]), [self.start + i for i in evicted],
                              [self.start + i for i in stood], [int(self.stand_in[layer, i]) for i in stood]))
        return out

    def lost_layers(self) -> dict[int, list[int]]:
        """Layer -> the KV heads in it that evicted part of the span."""
        layers: dict[int, list[int]] = {}
        for item in self.lost():
            layers.setdefault(item.layer, []).append(item.head)
        return layers

    def rows(self) -> list[dict]:
        """One row per layer, KV head and span token (for a CSV download)."""
        layers, heads, n = self.status.shape
        rows = []
        for layer in range(layers):
            for head in range(heads):
                for i in range(n):
                    rows.append({
                        "layer": layer, "kv_head": head, "position": self.start + i, "token": self.tokens[i],
                        "status": STATUS_NAMES[int(self.status[layer, head, i])],
                        "span_fate": FATE_NAMES[int(self.codes[layer, head])],
                        "stand_in": int(self.stand_in[layer, i]) if bool(self.represented[layer, head, i]) else -1,
                    })
        return rows

    def kept_layers(self) -> dict[int, list[int]]:
        """Layer -> the KV heads in it that kept every token of the span."""
        layers: dict[int, list[int]] = {}
        for layer, head in (self.codes == ALL_KEPT).nonzero().tolist():
            layers.setdefault(layer, []).append(head)
        return layers

    def summary(self) -> str:
        """One sentence: how many layer-heads kept it whole, and where (or where not, whichever list is shorter)."""
        total = self.codes.numel()
        kept = int((self.codes == ALL_KEPT).sum())
        text = f"{self.text.strip()!r} (#{self.start}–#{self.end - 1}) is kept whole in {kept} of {total} layer-heads"
        if kept in (0, total):
            return text + "."
        lost = total - kept
        listed, what = (self.kept_layers(), "kept whole") if kept <= lost else (self.lost_layers(), "lost")
        where = "; ".join(f"layer {layer} (head{'s' if len(h) > 1 else ''} {', '.join(map(str, h))})"
                          for layer, h in listed.items())
        return f"{text}; {what} in {where}."


def layer_status(layer: LayerTrace, head: int) -> torch.Tensor:
    """`[n_tokens]` int8 status of every token for one KV head; a layer that kept everything reads as kept
    (sink and question tokens keep their own status) rather than as one long recent window."""
    if not layer.no_op:
        return layer.token_status(head)
    status = torch.full((layer.n_tokens,), IMPORTANT, dtype=torch.int8)
    status[: layer.held_from] = EVICTED  # outside a sliding layer's window
    status[layer.held_from : layer.middle_start] = SINK
    if layer.protected:
        status[layer.n_tokens - layer.protected :] = PROTECTED
    return status


def stand_ins(layer: LayerTrace) -> torch.Tensor:
    """`[n_tokens]` int64: first token position of the representative of each token's bucket (-1: no bucket)."""
    out = torch.full((layer.n_tokens,), -1, dtype=torch.int64)
    if layer.bucket_members is None or layer.representatives is None:
        return out
    members = layer.bucket_members.long()
    firsts = layer.representatives.long()
    owner = firsts[layer.member_buckets()]
    if layer.granularity == "block" and layer.blocks is not None:  # units are block ids: to their tokens
        size = layer.block_size
        owner = layer.blocks[owner, 0].long().repeat_interleave(size)
        members = (layer.blocks[members, 0][:, None] + torch.arange(size)).reshape(-1)
    out[members] = owner
    return out


def span_fate(trace: RunTrace, start: int, end: int) -> SpanFate:
    """The fate of prompt tokens `[start, end)` (positions under the budget) in every layer and KV head."""
    n_tokens = trace.n_context
    if not 0 <= start < end <= n_tokens:
        raise KVCrushError(f"A span must lie within the {n_tokens} budgeted tokens, got [{start}, {end}).")
    heads = trace.layers[0].kept.shape[0]
    status = torch.stack([torch.stack([layer_status(layer, h)[start:end] for h in range(heads)])
                          for layer in trace.layers])
    stand_in = torch.stack([stand_ins(layer)[start:end] for layer in trace.layers])
    evicted = status == EVICTED
    represented = evicted & (stand_in >= 0)[:, None, :]
    n_evicted = evicted.sum(dim=-1)
    codes = torch.full(n_evicted.shape, PARTLY_KEPT, dtype=torch.int8)
    codes[n_evicted == 0] = ALL_KEPT
    none_kept = n_evicted == end - start
    codes[none_kept & represented.any(dim=-1)] = REPRESENTED
    codes[none_kept & ~represented.any(dim=-1)] = EVICTED_SPAN
    return SpanFate(start, end, list(trace.token_strings[start:end]), codes, status, stand_in, represented)
