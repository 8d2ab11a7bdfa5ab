"""why_token: each decision's status, rank and stand-in agree with the trace; one sentence per decision."""

from __future__ import annotations

import kvcrush
from kvcrush.explain import why_token
from tests.explain.checks import check_why


def test_every_decision_agrees_with_the_trace(trace):
    n = trace.n_context
    for position in (0, 3, n // 4, n // 2, n // 2 + 1, n - 40, n - 1):
        check_why(trace, position)


def test_signature_and_distance_are_the_recorded_ones(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.3, anchors=2))
    layer = trace.layers[1]
    position = layer.middle_start + 17
    decision = why_token(trace, position).decision(1, 0)
    bits = layer.signatures[17].tolist()
    assert decision.signature == "".join("1" if b else "0" for b in bits)
    assert decision.distance == int(layer.distances[17]) and decision.anchor == int(layer.unit_anchor[17])
