"""walk_steps: every step's numbers and arrays against what the selection recorded."""

from __future__ import annotations

import pytest

import kvcrush
from kvcrush.errors import KVCrushError
from kvcrush.explain import walk_steps
from tests.explain.checks import check_walk


def test_every_step_agrees_with_the_trace(trace):
    for index, layer in enumerate(trace.layers):
        for head in range(layer.kept.shape[0]):
            check_walk(trace, index, head)


def test_single_anchor_representatives_are_evenly_spaced_along_the_distance_order(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.3))
    layer = trace.layers[0]
    steps = {step.key: step for step in walk_steps(trace, 0, 0)}
    order = sorted(layer.candidates.tolist(), key=lambda t: (int(layer.distances[t - layer.middle_start]), t))
    step = steps["buckets"].numbers["step"]
    k = steps["candidates"].numbers["k"]
    assert steps["representatives"].data["positions"].tolist() == order[: k * step : step]
    assert f"step = floor({len(order):,} / {k:,}) = {step:,}" in steps["buckets"].text


def test_bad_layer_or_head_is_refused(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.3))
    with pytest.raises(KVCrushError):
        walk_steps(trace, len(trace.layers), 0)
    with pytest.raises(KVCrushError):
        walk_steps(trace, 0, 99)
