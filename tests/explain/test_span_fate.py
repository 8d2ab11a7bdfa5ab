"""span_fate against the kept sets and buckets recorded in real traces."""

from __future__ import annotations

import pytest

import kvcrush
from kvcrush.errors import KVCrushError
from kvcrush.explain import FATE_NAMES, span_fate
from tests.explain.checks import check_span


def test_span_fate_matches_the_kept_masks_and_buckets(trace):
    n = trace.n_context
    for start, end in ((0, 5), (n // 3, n // 3 + 7), (n - 4, n)):
        check_span(trace, start, end)


def test_lost_lists_missing_positions_and_their_stand_ins(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.2))
    fate = span_fate(trace, 50, 90)
    lost = fate.lost()
    assert lost and all(item.missing for item in lost)
    for item in lost:
        layer = trace.layers[item.layer]
        kept = set(layer.kept[item.head].tolist())
        assert set(item.missing) == set(range(50, 90)) - kept
        assert set(item.stood_in) <= set(item.missing)
        assert all(rep in kept for rep in item.representatives)
    rows = fate.rows()
    assert len(rows) == fate.status.numel() and {r["span_fate"] for r in rows} <= set(FATE_NAMES)
    assert "kept whole in" in fate.summary() and str(fate.start) in fate.summary()


def test_a_span_outside_the_budgeted_tokens_is_refused(prepared):
    trace = prepared.select(kvcrush.make_policy("snapkv", 0.5))
    with pytest.raises(KVCrushError):
        span_fate(trace, 5, trace.n_context + 1)
    with pytest.raises(KVCrushError):
        span_fate(trace, 7, 7)
