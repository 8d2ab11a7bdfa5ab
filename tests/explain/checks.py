"""Checks of the explanations against what a selection recorded, shared by the tiny-model and packaged-model tests.

Each takes a real trace and fails when an explanation disagrees with the recorded kept sets, candidates,
buckets or representatives.
"""

from __future__ import annotations

import torch

from kvcrush.explain import (
    ALL_KEPT,
    EVICTED_SPAN,
    PARTLY_KEPT,
    REPRESENTED,
    STEP_KEYS,
    layer_units,
    span_fate,
    walk_steps,
    why_token,
)
from kvcrush.explain.span_fate import layer_status
from kvcrush.metrics import kept_mask
from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE


def _units_to_tokens(units, mask: torch.Tensor) -> set[int]:
    return {units.start + u * units.size + i for u in mask.nonzero().flatten().tolist() for i in range(units.size)}


def check_units(layer) -> bool:
    """Each head's replayed ranking and cut-off give exactly its kept set; the candidates are the recorded ones.
    False for a layer that kept everything."""
    units = layer_units(layer)
    if units is None:
        assert layer.no_op
        return False
    middle = set(range(units.start, units.start + units.n_units * units.size))
    representatives = set(layer.representative_tokens().tolist()) if layer.representatives is not None else set()
    for head in range(layer.kept.shape[0]):
        kept = set(layer.kept[head].tolist()) & middle
        assert _units_to_tokens(units, units.importance_kept(head)) == kept - representatives
        assert int(units.importance_kept(head).sum()) == units.cutoff
        assert sorted(units.rank[head].tolist()) == list(range(1, units.n_units + 1))  # a permutation
    if layer.candidates is not None:
        recorded = layer.candidates.long() - (0 if units.size > 1 else units.start)
        assert units.candidates().nonzero().flatten().tolist() == sorted(recorded.tolist())
        assert units.spilled == (units.n_representatives < units.crush)
    return True


def check_span(trace, start: int, end: int) -> None:
    """span_fate's statuses, codes and stand-ins against the kept masks and buckets."""
    fate = span_fate(trace, start, end)
    assert fate.codes.shape == (len(trace.layers), trace.layers[0].kept.shape[0])
    for index, layer in enumerate(trace.layers):
        mask = kept_mask(layer)[:, start:end]
        candidates = set(layer.unit_tokens(layer.candidates).tolist()) if layer.candidates is not None else set()
        for head in range(mask.shape[0]):
            kept = mask[head]
            assert torch.equal(fate.kept[index, head], kept)
            code = int(fate.codes[index, head])
            if kept.all():
                assert code == ALL_KEPT
            elif kept.any():
                assert code == PARTLY_KEPT
            else:
                assert code in (REPRESENTED, EVICTED_SPAN)
                assert (code == REPRESENTED) == bool(fate.represented[index, head].any())
            for i in fate.represented[index, head].nonzero().flatten().tolist():
                assert start + i in candidates  # only a token no head kept has a bucket
                assert bool(kept_mask(layer)[:, int(fate.stand_in[index, i])].all())  # representatives: every head
    assert sum(fate.counts().values()) == fate.codes.numel()
    assert len(fate.lost()) == int((fate.codes != ALL_KEPT).sum())


def check_why(trace, position: int) -> None:
    """Every decision's status, rank, cut-off and stand-in against the trace; one sentence each."""
    why = why_token(trace, position)
    assert len(why.decisions) == len(trace.layers) * trace.layers[0].kept.shape[0]
    for decision in why.decisions:
        layer = trace.layers[decision.layer]
        assert decision.status == int(layer_status(layer, decision.head)[position])
        assert decision.sentence.startswith(f"layer {decision.layer}, head {decision.head}: ")
        assert decision.sentence.endswith("kept.") == decision.kept
        if decision.reason != "ranked":
            continue
        units = layer_units(layer)
        unit = units.unit_of(position)
        assert decision.rank == int(units.rank[decision.head, unit])
        assert (decision.status == IMPORTANT) == (decision.rank <= decision.cutoff
                                                   and not bool(units.is_representative[unit]))
        assert f"rank {decision.rank:,} of" in decision.sentence
        if decision.bucket is not None:
            assert position in layer.unit_tokens(layer.buckets[decision.bucket]).tolist()
            assert decision.representative in layer.representative_tokens().tolist()
            if decision.status == EVICTED:
                assert f"#{decision.representative}" in decision.sentence
        if decision.status == EVICTED and decision.bucket is None and layer.signatures is not None:
            several = layer.anchors is not None and layer.anchors.shape[0] > 1
            assert decision.kept_by or several or not layer.buckets
            if not decision.kept_by and not layer.buckets:
                assert "T_crush = 0" in decision.sentence
        if decision.status == REPRESENTATIVE:
            assert "representative of bucket" in decision.sentence
    assert why.kept_count() == sum(d.kept for d in why.decisions)
    assert len(why.rows()) == len(why.decisions)


def _check_crush_steps(steps: dict, layer, units) -> None:
    recorded = layer.candidates.long() - (0 if units.size > 1 else units.start)
    candidate = steps["candidates"].data["candidate"]
    assert candidate.nonzero().flatten().tolist() == sorted(recorded.tolist())
    assert steps["candidates"].numbers["candidates |F|"] == recorded.numel()
    assert steps["candidates"].numbers["k"] == len(layer.buckets)
    assert torch.equal(steps["signatures"].data["bits"][:, : layer.signatures.shape[1]].bool(),
                       layer.signatures[:: units.size][: units.n_units])  # each unit's first token's bits
    anchors = layer.anchors if layer.anchors is not None else layer.anchor[None]
    assert torch.equal(steps["anchor"].data["anchors"].bool(), anchors)
    distances = steps["distances"].data["distances"]
    assert sorted(distances.tolist()) == sorted(layer.distances[recorded].tolist())
    # Buckets: the candidates in (anchor group, distance, position) order cut into the recorded sizes.
    buckets = steps["buckets"]
    sizes = buckets.data["sizes"].tolist()
    assert sizes == [b.numel() for b in layer.buckets]
    offset = 0 if units.size > 1 else units.start
    bucketed = torch.cat(layer.buckets).long() - offset if layer.buckets else recorded[:0]
    assert set(bucketed.tolist()) <= set(recorded.tolist())  # every bucket member is a candidate
    if layer.anchors is None or layer.anchors.shape[0] == 1:
        assert sum(sizes) == recorded.numel() or not layer.buckets  # one anchor: every candidate, when any is picked
    ordered = buckets.data["ordered_distances"]
    groups = torch.repeat_interleave(buckets.data["group"], buckets.data["sizes"])
    for g in groups.unique().tolist():
        within = ordered[groups == g]
        assert torch.all(within[1:] >= within[:-1])  # sorted by distance inside each group
    if "step" in buckets.numbers:  # one anchor: step 7 exactly
        step = buckets.numbers["step"]
        assert sizes[:-1] == [step] * (len(sizes) - 1) and sizes[-1] >= step
    reps = steps["representatives"].data["positions"]
    assert reps.tolist() == [int(layer.unit_tokens(r[None])[0]) for r in layer.representatives]
    assert steps["representatives"].numbers["representatives"] == layer.representatives.numel()


def check_walk(trace, index: int, head: int) -> None:
    """Every step's numbers and arrays against the trace."""
    layer = trace.layers[index]
    steps = {step.key: step for step in walk_steps(trace, index, head)}
    units = layer_units(layer)
    kept = steps["kept"]
    assert torch.equal(kept.data["status"], layer_status(layer, head))
    assert kept.numbers["kept"] == int((layer_status(layer, head) != EVICTED).sum())
    if units is None:
        assert list(steps) == ["kept"]
        return
    expected = STEP_KEYS if layer.signatures is not None else ("scores", "cutoff", "kept")
    assert tuple(steps) == expected
    assert kept.numbers["kept"] == layer.kept[head].numel()
    assert torch.equal(steps["scores"].data["scores"], units.scores)
    cutoff = steps["cutoff"]
    assert cutoff.numbers["cut-off"] == units.cutoff
    assert torch.equal(cutoff.data["sorted"], units.scores[head, units.order(head)])
    for step in steps.values():
        assert step.text.count(".") >= 1 and step.title
    if layer.signatures is not None:
        _check_crush_steps(steps, layer, units)
