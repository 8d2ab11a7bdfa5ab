"""Why this token? Every layer's and KV head's decision about one prompt token, one sentence each.

For a middle token: its base score, its rank in the head's order against the importance cut-off
(`kvcrush.explain.units`), and for KVCrush its signature bits, its (block's) distance to the nearest
anchor, its bucket and the representative standing in for that bucket. Sink, recent-window and
question tokens are kept by rule and say so. Every value comes from the run's trace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kvcrush.errors import KVCrushError
from kvcrush.explain.span_fate import layer_status
from kvcrush.explain.units import LayerUnits, layer_units
from kvcrush.trace import (
    EVICTED,
    IMPORTANT,
    PROTECTED,
    RECENT,
    REPRESENTATIVE,
    SINK,
    STATUS_NAMES,
    LayerTrace,
    RunTrace,
)

PREVIEW = 24  # characters of a token's text quoted in a sentence


@dataclass
class HeadDecision:
    """One layer's and KV head's decision about one token.

    status: `kvcrush.trace` status code. reason: "no eviction", "sink", "recent", "question", "outside window"
    (older than a sliding layer's window) or "ranked".
    unit: the token's block id at block level, else its position (None outside the ranked middle).
    score: the head's base score of the token; unit_score: of its block (the token's own at token level).
    rank / n_ranked / cutoff: its place in the head's order, out of how many, and how many the head keeps by
    importance. signature: the token's bits ('' without signatures). distance / anchor: its unit's Hamming
    distance to the nearest anchor and that anchor's index. bucket / bucket_size / representative
    (first token position) / representative_text: the KVCrush bucket the unit is in. kept_by: the other KV
    heads that kept the token (a KVCrush candidate is a unit no head kept).
    """

    layer: int
    head: int
    status: int
    reason: str
    sentence: str
    unit: int | None = None
    score: float | None = None
    unit_score: float | None = None
    rank: int | None = None
    n_ranked: int | None = None
    cutoff: int | None = None
    signature: str = ""
    distance: int | None = None
    anchor: int | None = None
    bucket: int | None = None
    bucket_size: int | None = None
    representative: int | None = None
    representative_text: str = ""
    kept_by: tuple[int, ...] = ()

    @property
    def kept(self) -> bool:
        return self.status != EVICTED

    def row(self) -> dict:
        """Plain values for a table or CSV row (status as its name)."""
        row = asdict(self)
        row["status"] = STATUS_NAMES[self.status]
        row["kept_by"] = ",".join(map(str, self.kept_by))
        return row


@dataclass
class TokenWhy:
    """Every decision about prompt token `position` (`decisions`: layer-major, then KV head)."""

    position: int
    token: str
    decisions: list[HeadDecision]

    def decision(self, layer: int, head: int) -> HeadDecision:
        return next(d for d in self.decisions if d.layer == layer and d.head == head)

    def kept_count(self) -> int:
        return sum(d.kept for d in self.decisions)

    def summary(self) -> str:
        kept = self.kept_count()
        total = len(self.decisions)
        return (f"#{self.position} {quote(self.token)} is kept in {kept} of {total} layer-heads "
                f"({total - kept} evict it).")

    def rows(self) -> list[dict]:
        return [d.row() for d in self.decisions]


def quote(text: str) -> str:
    """A token's text in quotes, shortened, line breaks shown."""
    text = text.replace("\n", "↵")
    return repr(text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…")


def _unit_text(units: LayerUnits, unit: int, tokens: list[str]) -> str:
    first, end = units.unit_span(unit)
    if units.size == 1:
        return f"#{first} {quote(tokens[first])}"
    return f"block {unit} (#{first}–#{end - 1} {quote(''.join(tokens[first:end]))})"


def _ranked(layer: LayerTrace, units: LayerUnits, head: int, position: int, status: int,
            tokens: list[str], kept_by: tuple[int, ...]) -> HeadDecision:
    """The decision about a middle token the head ranked."""
    unit = units.unit_of(position)
    assert unit is not None
    rank, cutoff = int(units.rank[head, unit]), units.cutoff
    what = "" if units.size == 1 else f"block {unit} (#{units.unit_span(unit)[0]}–#{units.unit_span(unit)[1] - 1}) "
    aside = " (representatives left aside)" if units.spilled else ""
    of = f"{units.n_ranked:,} {'blocks' if units.size > 1 else 'tokens'}"
    opening = f"layer {layer.layer}, head {head}: {what}rank {rank:,} of {of}{aside}, cut-off {cutoff:,}"
    decision = HeadDecision(layer.layer, head, status, "ranked", "", unit=unit if units.size > 1 else position,
                            score=float(layer.scores[head, position - units.start]),
                            unit_score=float(units.scores[head, unit]), rank=rank, n_ranked=units.n_ranked,
                            cutoff=cutoff, kept_by=kept_by)
    if layer.signatures is not None:
        bits = layer.signatures[position - layer.middle_start].to("cpu")
        decision.signature = "".join("1" if b else "0" for b in bits.tolist())
    if layer.distances is not None:
        decision.distance = int(layer.distances[unit])
        decision.anchor = int(layer.unit_anchor[unit]) if layer.unit_anchor is not None else 0
    bucket = int(units.bucket[unit])
    if bucket >= 0:
        rep = units.representative_of(bucket)
        decision.bucket, decision.bucket_size = bucket, int(layer.buckets[bucket].numel())
        decision.representative = units.unit_span(rep)[0]
        decision.representative_text = _unit_text(units, rep, tokens)
    decision.sentence = opening + ": " + _verdict(decision, layer, units, unit)
    return decision


def _verdict(decision: HeadDecision, layer: LayerTrace, units: LayerUnits, unit: int) -> str:
    """The end of a ranked token's sentence: kept or evicted, and what KVCrush did about it."""
    if decision.status == IMPORTANT:
        return "within the cut-off: kept."
    near = "" if decision.distance is None else f", distance {decision.distance}"
    several = layer.anchors is not None and layer.anchors.shape[0] > 1
    anchor = f" to anchor {decision.anchor}" if several and decision.anchor is not None else ""
    if decision.status == REPRESENTATIVE:
        return (f"below the cut-off, but it is the KVCrush representative of bucket {decision.bucket} "
                f"({decision.bucket_size} members{near}{anchor}): kept.")
    if decision.bucket is not None:
        return (f"evicted; bucket {decision.bucket} ({decision.bucket_size} members{near}{anchor}) is represented by "
                f"{decision.representative_text}.")
    if layer.signatures is None:
        return "evicted."
    if decision.kept_by:
        heads = ", ".join(map(str, decision.kept_by))
        return (f"evicted; not a KVCrush candidate because KV head{'s' if len(decision.kept_by) > 1 else ''} {heads} "
                "kept it, so no representative stands in for it here.")
    if not layer.buckets:
        return (f"evicted; a KVCrush candidate{near}{anchor}, but this layer's budget left no room for "
                "representatives (T_crush = 0), so none stands in for it.")
    return f"evicted; a KVCrush candidate{near}{anchor}, but its anchor's group got no representative."


def _by_rule(layer: LayerTrace, head: int, position: int, status: int, token: str) -> HeadDecision:
    """Tokens kept (or not ranked) by rule: no eviction, sink, question, recent window."""
    opening = f"layer {layer.layer}, head {head}: #{position} {quote(token)}"
    if position < layer.held_from:
        return HeadDecision(layer.layer, head, status, "outside window",
                            f"{opening}: older than this sliding-window layer's window (it holds tokens from "
                            f"#{layer.held_from} on), so the model itself no longer attends to it: evicted.")
    if layer.no_op:
        return HeadDecision(layer.layer, head, status, "no eviction",
                            f"{opening}: the budget covers the prompt, nothing is evicted: kept.")
    if status == SINK:
        return HeadDecision(layer.layer, head, status, "sink",
                            f"{opening}: one of the first {layer.sink} tokens (attention sinks): kept.")
    if status == PROTECTED:
        return HeadDecision(layer.layer, head, status, "question",
                            f"{opening}: part of the question, the observation window (query-aware): kept.")
    if status == RECENT:
        extra = " (at block level it also takes the tokens that do not fill a block)" \
            if layer.granularity == "block" else ""
        return HeadDecision(layer.layer, head, status, "recent",
                            f"{opening}: in the last {layer.recent} tokens, the recent window{extra}: kept.")
    raise KVCrushError(f"Token #{position} of layer {layer.layer} is neither ranked nor kept by rule.")


def why_token(trace: RunTrace, position: int) -> TokenWhy:
    """Every layer's and KV head's decision about prompt token `position` (under the budget)."""
    if not 0 <= position < trace.n_context:
        raise KVCrushError(f"Position {position} is outside the {trace.n_context} budgeted tokens.")
    tokens = trace.token_strings
    decisions = []
    for layer in trace.layers:
        heads = layer.kept.shape[0]
        statuses = [int(layer_status(layer, h)[position]) for h in range(heads)]
        units = layer_units(layer)
        unit = units.unit_of(position) if units is not None else None
        for head, status in enumerate(statuses):
            if unit is None or status in (SINK, PROTECTED, RECENT):
                decisions.append(_by_rule(layer, head, position, status, tokens[position]))
                continue
            kept_by = tuple(h for h, s in enumerate(statuses) if h != head and s == IMPORTANT)
            decisions.append(_ranked(layer, units, head, position, status, tokens, kept_by))
    return TokenWhy(position, tokens[position], decisions)
