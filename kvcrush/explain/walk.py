"""Walk the algorithm: one layer of a run taken through spec section 3 (section 4 at block level), step by step.

`walk_steps(trace, layer, head)` returns the steps in order: scores (and the budget split), importance
cut-off, candidates, signatures, anchor(s), distances, buckets, representatives, the final kept set,
each with two or three sentences holding the run's real numbers and the arrays its figure draws. Steps
that depend on a KV head (scores, cut-off, kept set) use `head`; the others are the layer's.

Every number is read from the trace or replayed from it exactly as the selection computed it (each
head's stable order of the recorded scores, `kvcrush.explain.units`); tests check each step against the
recorded candidates, buckets, representatives and kept sets, at token and block level and with several
anchors. Policies without KVCrush get the scores, cut-off and kept-set steps only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from kvcrush.errors import KVCrushError
from kvcrush.explain.span_fate import layer_status, stand_ins
from kvcrush.explain.units import LayerUnits, layer_units
from kvcrush.explain.why import quote
from kvcrush.trace import EVICTED, IMPORTANT, PROTECTED, RECENT, REPRESENTATIVE, SINK, LayerTrace, RunTrace

STEP_KEYS = ("scores", "cutoff", "candidates", "signatures", "anchor", "distances", "buckets", "representatives",
             "kept")
STEP_TITLES = {
    "scores": "Scores and the budget split", "cutoff": "Importance cut-off", "candidates": "Candidates",
    "signatures": "Signatures", "anchor": "Anchor", "distances": "Distances", "buckets": "Buckets",
    "representatives": "Representatives", "kept": "The final kept set",
}


@dataclass
class WalkStep:
    """One step of the walk.

    key: one of `STEP_KEYS`. text: two or three sentences with the run's numbers. numbers: the values the
    text quotes (name -> value), for a table or download. data: what the step's figure draws, by key:
    scores: `positions` [units] first token of each unit, `scores` [kv_heads, units] unit scores;
    cutoff: `sorted` [units] the head's scores best first, `cutoff` int;
    candidates: `positions` [units], `heads_keeping` [units] heads whose top T_imp holds the unit,
    `candidate` [units] bool;
    signatures: `positions` [units], `bits` [units, width] uint8, `candidate` [units] bool;
    anchor: `anchors` [k, width] uint8;
    distances: `distances` [candidates] int64, `group` [candidates] int64 nearest anchor;
    buckets: `ordered_distances` [candidates] in bucket order, `sizes` [buckets], `group` [buckets];
    representatives: `positions` [buckets] representative's first token, `sizes` [buckets],
    `distances` [buckets];
    kept: `status` [n_tokens] int8 status codes of the head.
    """

    key: str
    title: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class _Walk:
    """The shared context of one layer's steps."""

    def __init__(self, trace: RunTrace, layer: LayerTrace, head: int, units: LayerUnits) -> None:
        self.trace, self.layer, self.head, self.units = trace, layer, head, units
        self.tokens = trace.token_strings
        self.crush = layer.signatures is not None
        self.block = units.size > 1
        self.noun = "blocks" if self.block else "tokens"
        policy = trace.policy
        self.base = policy.get("base", {}).get("name", "?") if isinstance(policy.get("base"), dict) else policy["name"]
        self.policy = policy

    def unit_text(self, unit: int) -> str:
        first, end = self.units.unit_span(unit)
        if not self.block:
            return f"#{first} {quote(self.tokens[first])}"
        return f"block {unit} (#{first}–#{end - 1})"

    # --- the steps ---------------------------------------------------------------------------------
    def scores(self) -> WalkStep:
        layer, units, head = self.layer, self.units, self.head
        split = (f"{layer.sink} sink + {layer.recent} recent + {layer.importance} by importance"
                 + (f" + {layer.crush} KVCrush representatives (crush fraction {layer.crush_fraction:g})"
                    if self.crush else ""))
        if self.block:
            split = (f"{layer.sink} sink + {layer.recent} recent (with the tokens that do not fill a block) + "
                     f"{units.candidate_cutoff + units.crush} whole blocks of {units.size}, "
                     f"{units.crush} of them for representatives")
        best = int(torch.argmax(units.scores[head]))
        n_middle = units.n_units * units.size
        text = (f"Layer {layer.layer} keeps T = {layer.budget:,} of its {layer.n_tokens:,} tokens in every KV head: "
                f"{split}. The {'base ' if self.crush else ''}policy {self.base} scored the "
                f"{n_middle:,} middle tokens #{units.start}–#{units.start + n_middle - 1}"
                + (f", a block's score being the sum of its {units.size} tokens'" if self.block else "")
                + f"; KV head {head}'s highest is {float(units.scores[head, best]):.4g} at {self.unit_text(best)}.")
        numbers = {"tokens": layer.n_tokens, "budget T": layer.budget, "sink": layer.sink, "recent": layer.recent,
                   "importance T_imp": layer.importance, "KVCrush T_crush": layer.crush, "middle units": units.n_units,
                   "base policy": self.base}
        positions = units.start + torch.arange(units.n_units) * units.size
        return self._step("scores", text, numbers, positions=positions, scores=units.scores)

    def cutoff(self) -> WalkStep:
        units, head = self.units, self.head
        order = units.order(head)
        ranked = units.scores[head, order]
        cut = units.cutoff
        last = float(ranked[min(cut, len(ranked)) - 1]) if cut else float("nan")
        following = float(ranked[cut]) if cut < len(ranked) else float("nan")
        union = int((units.heads_keeping() > 0).sum())
        text = (f"KV head {head} sorts its {units.n_units:,} {self.noun} by score (ties: the lower position first) "
                f"and keeps the top {cut:,}: the last one kept scores {last:.4g}, the next {following:.4g}. "
                f"Each head ranks with its own scores, so the {units.rank.shape[0]} KV heads' top "
                f"{units.candidate_cutoff:,} together cover {union:,} {self.noun}.")
        if units.spilled:
            text += (f" There are fewer candidates than representatives to pick, so the unused budget goes back to "
                     f"importance: each head keeps {cut:,} instead of {units.candidate_cutoff:,} (representatives "
                     "left aside in the ranking).")
        numbers = {"head": head, "cut-off": cut, "T_imp (units)": units.candidate_cutoff, "last kept score": last,
                   "first evicted score": following, "covered by some head": union}
        return self._step("cutoff", text, numbers, sorted=ranked, cutoff=cut)

    def candidates(self) -> WalkStep:
        units = self.units
        heads_keeping = units.heads_keeping()
        candidate = heads_keeping == 0
        n_candidates = int(candidate.sum())
        k = units.crush
        picked = min(n_candidates, k)
        text = (f"Candidates F are the middle {self.noun} that no KV head kept in its top {units.candidate_cutoff:,}: "
                f"|F| = {n_candidates:,} of {units.n_units:,}. KVCrush will keep k = min(|F|, T_crush) = "
                f"min({n_candidates:,}, {k:,}) = {picked:,} of them as representatives, one per bucket of similar "
                f"{self.noun}.")
        return self._step("candidates", text, {"candidates |F|": n_candidates, "T_crush (units)": k, "k": picked},
                          positions=units.start + torch.arange(units.n_units) * units.size,
                          heads_keeping=heads_keeping, candidate=candidate)

    def signatures(self) -> WalkStep:
        layer, units = self.layer, self.units
        token_bits = layer.signatures.bool()
        n_sig, heads = token_bits.shape
        bits = token_bits[: units.n_units * units.size].reshape(units.n_units, units.size * heads)
        candidate = units.candidates()
        kind = self.policy.get("signature_heads", "query")
        common = Counter("".join("1" if b else "0" for b in row) for row in bits[candidate].tolist()).most_common(1)
        text = (f"Every middle token gets one bit per {kind} head ({heads} heads): 1 when the token is in the top half "
                f"({n_sig // 2:,} of {n_sig:,}) of that head's scores. On average a token has "
                f"{float(token_bits.float().sum(dim=1).mean()):.1f} of {heads} bits set.")
        if self.block:
            text += (f" A block's signature joins its {units.size} tokens' bits, token after token: "
                     f"{bits.shape[1]} bits.")
        if common:
            text += f" The most common candidate signature is {common[0][0]} ({common[0][1]:,} candidates)."
        return self._step("signatures", text, {"heads H": heads, "width": bits.shape[1], "top half": n_sig // 2},
                          positions=units.start + torch.arange(units.n_units) * units.size,
                          bits=bits.to(torch.uint8), candidate=candidate)

    def anchor(self) -> WalkStep:
        layer = self.layer
        anchors = layer.anchors if layer.anchors is not None else layer.anchor[None]
        mode, count, anchor_mode = self.policy.get("anchor", "?"), anchors.shape[0], self.policy.get("anchor_mode")
        shown = " ".join(_bits(row) for row in anchors[:4]) + (" …" if count > 4 else "")
        how = {"random": f"seeded random bits (seed {self.policy.get('seed', 0)})", "zeros": "all zeros",
               "ones": "all ones", "alternating": "0, 1, 0, 1, …",
               "mean": "bit h set when more than half of the middle units have it"}.get(mode, mode)
        if count == 1:
            text = (f"Candidates are compared with one anchor of {anchors.shape[1]} bits. Mode {mode}: {how}, "
                    f"here {shown}.")
        elif anchor_mode == "kmeans":
            text = (f"Beyond the paper: {count} anchors, the centroids of a seeded k-means (Hamming distance, majority "
                    f"vote, 10 rounds) over the candidates' signatures: {shown}. Each candidate joins its nearest "
                    "anchor (ties: the lower index).")
        else:
            text = (f"Beyond the paper: {count} fixed anchors, {mode} first and then the other modes in the order "
                    f"zeros, ones, alternating, mean, random: {shown}. Each candidate joins its nearest anchor (ties: "
                    "the lower index).")
        return self._step("anchor", text, {"mode": mode, "anchors": count, "anchor bits": _bits(anchors[0])},
                          anchors=anchors.to(torch.uint8))

    def distances(self) -> WalkStep:
        layer, units = self.layer, self.units
        candidate = units.candidates()
        distances = layer.distances[candidate].long()
        group = (layer.unit_anchor[candidate].long() if layer.unit_anchor is not None
                 else torch.zeros_like(distances))
        width = layer.anchor.numel()
        several = layer.anchors is not None and layer.anchors.shape[0] > 1
        if distances.numel():
            text = (f"A candidate's distance is the number of bits where its signature differs from "
                    f"{'its nearest' if several else 'the'} anchor (Hamming): over the {distances.numel():,} "
                    f"candidates it runs from {int(distances.min())} to {int(distances.max())} of {width} bits, "
                    f"mean {float(distances.float().mean()):.1f}.")
        else:
            text = "There are no candidates: every middle unit was kept by some head, so nothing is grouped."
        if several and distances.numel():
            sizes = torch.bincount(group, minlength=layer.anchors.shape[0]).tolist()
            text += " Candidates per anchor: " + ", ".join(f"anchor {g}: {n:,}" for g, n in enumerate(sizes)) + "."
        numbers = {"candidates": distances.numel(), "width": width}
        if distances.numel():
            numbers.update({"min": int(distances.min()), "max": int(distances.max()),
                            "mean": round(float(distances.float().mean()), 2)})
        return self._step("distances", text, numbers, distances=distances, group=group)

    def buckets(self) -> WalkStep:
        layer = self.layer
        sizes = layer.bucket_sizes.tolist() if layer.bucket_sizes is not None else []
        ordered = layer.bucket_members.long() if sizes else torch.zeros(0, dtype=torch.long)
        unit_ids = ordered - (0 if self.block else self.units.start)
        ordered_distances = layer.distances[unit_ids].long() if ordered.numel() else ordered
        group = (layer.bucket_anchor.long() if layer.bucket_anchor is not None
                 else torch.zeros(len(sizes), dtype=torch.long))
        n_candidates, k = sum(sizes), len(sizes)
        several = layer.anchors is not None and layer.anchors.shape[0] > 1
        if not k:
            text = "No buckets: there are no candidates (or no budget for representatives)."
        elif several:
            shares = torch.bincount(group, minlength=layer.anchors.shape[0]).tolist()
            text = (f"Each anchor's group gets representatives in proportion to its size (largest remainders, "
                    f"{k} in all): " + ", ".join(f"anchor {g}: {n}" for g, n in enumerate(shares)) + ". Within a "
                    "group the candidates are sorted by (distance, position) and cut into that many buckets of "
                    "equal step, the last one taking the rest.")
        else:
            step = n_candidates // k
            rest = n_candidates - step * k
            text = (f"The {n_candidates:,} candidates are sorted by (distance, position) and cut into k = {k:,} "
                    f"buckets of step = floor({n_candidates:,} / {k:,}) = {step:,} {self.noun}"
                    + (f"; the last bucket also takes the {rest:,} left over." if rest else ".")
                    + " Neighbours in this order have similar head behaviour.")
        numbers = {"buckets": k, "candidates": n_candidates}
        if k and not several:
            numbers["step"] = n_candidates // k
        return self._step("buckets", text, numbers, ordered_distances=ordered_distances,
                          sizes=torch.tensor(sizes, dtype=torch.long), group=group)

    def representatives(self) -> WalkStep:
        layer, units = self.layer, self.units
        reps = [units.unit_id(r) for r in layer.representatives.tolist()] if layer.representatives is not None else []
        sizes = layer.bucket_sizes.tolist() if layer.bucket_sizes is not None else []
        how = ("the member with the highest base score (mean over KV heads; beyond the paper)"
               if self.policy.get("representative") == "best" else "the first member in distance order")
        examples = "; ".join(f"bucket {i} → {self.unit_text(u)} ({sizes[i]} members, distance "
                             f"{int(layer.distances[u])})" for i, u in enumerate(reps[:3]))
        text = (f"Each bucket keeps one member, {how}, to stand in for all of them: {len(reps):,} representatives "
                f"({layer.crush_used:,} tokens). {examples}{' …' if len(reps) > 3 else ''}. They join every KV "
                "head's kept set.")
        positions = torch.tensor([units.unit_span(u)[0] for u in reps], dtype=torch.long)
        distances = layer.distances[torch.tensor(reps, dtype=torch.long)].long()
        return self._step("representatives", text, {"representatives": len(reps), "tokens": layer.crush_used},
                          positions=positions, sizes=torch.tensor(sizes, dtype=torch.long), distances=distances)

    def kept(self) -> WalkStep:
        return kept_step(self.trace, self.layer, self.head)

    def _step(self, key: str, text: str, numbers: dict[str, Any], **data: Any) -> WalkStep:
        return WalkStep(key, STEP_TITLES[key], text, numbers, data)


def _bits(row: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in row.tolist())


def kept_step(trace: RunTrace, layer: LayerTrace, head: int) -> WalkStep:
    """The final kept set of one head (also the whole walk of a layer that kept everything)."""
    status = layer_status(layer, head)
    counts = {code: int((status == code).sum()) for code in (SINK, RECENT, IMPORTANT, REPRESENTATIVE, PROTECTED,
                                                             EVICTED)}
    kept = layer.n_tokens - counts[EVICTED]
    if layer.no_op:
        text = (f"Layer {layer.layer}: the budget covers the prompt ({layer.n_tokens:,} tokens), so nothing is "
                "evicted and there is nothing to walk through.")
    else:
        evicted = status == EVICTED
        stood = int((evicted & (stand_ins(layer) >= 0)).sum())
        parts = [f"{counts[SINK]:,} sink", f"{counts[RECENT]:,} recent", f"{counts[IMPORTANT]:,} by importance"]
        if counts[REPRESENTATIVE]:
            parts.append(f"{counts[REPRESENTATIVE]:,} KVCrush representatives")
        if counts[PROTECTED]:
            parts.append(f"{counts[PROTECTED]:,} question")
        text = (f"KV head {head} of layer {layer.layer} keeps {kept:,} tokens (T = {layer.budget:,}): "
                f"{', '.join(parts)}. The other {counts[EVICTED]:,} are evicted"
                + (f"; {stood:,} of them have a representative standing in for their bucket." if layer.buckets
                   else ".")
                + " This is what the compressed cache holds for decoding.")
    numbers = {"kept": kept, "evicted": counts[EVICTED], "sink": counts[SINK], "recent": counts[RECENT],
               "importance": counts[IMPORTANT], "representatives": counts[REPRESENTATIVE],
               "question": counts[PROTECTED]}
    return WalkStep("kept", STEP_TITLES["kept"], text, numbers, {"status": status})


def walk_steps(trace: RunTrace, layer_index: int, head: int = 0) -> list[WalkStep]:
    """The steps of one layer (and KV head, where a step depends on it), in the spec's order."""
    if not 0 <= layer_index < len(trace.layers):
        raise KVCrushError(f"Layer {layer_index} does not exist; the run has {len(trace.layers)} layers.")
    layer = trace.layers[layer_index]
    if not 0 <= head < layer.kept.shape[0]:
        raise KVCrushError(f"KV head {head} does not exist; layer {layer_index} has {layer.kept.shape[0]}.")
    units = layer_units(layer)
    if units is None:
        return [kept_step(trace, layer, head)]
    walk = _Walk(trace, layer, head, units)
    keys = STEP_KEYS if walk.crush else ("scores", "cutoff", "kept")
    return [getattr(walk, key)() for key in keys]
