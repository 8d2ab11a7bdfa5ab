"""Traces: moving every layer's tensors to the host at once."""

from __future__ import annotations

import torch

from kvcrush.syncs import HostSyncCounter
from kvcrush.trace import LayerTrace, traces_to_host


def _trace(layer: int) -> LayerTrace:
    kept = torch.arange(6).reshape(2, 3) + layer
    trace = LayerTrace(layer, 10, 3, 0, 1, 1, 1, 1, False, kept, stored_scores=torch.rand(2, 8),
                       representatives=torch.tensor([4, 6]), crush_fraction=0.25)
    trace.set_signatures(torch.rand(8, 4) > 0.5)
    trace.set_buckets([torch.tensor([4, 5]), torch.tensor([6])], torch.rand(2, 3))
    return trace


def test_traces_to_host_moves_every_field_once_for_all_layers():
    traces = [_trace(i) for i in range(5)]
    before = [(t.kept.clone(), t.scores.clone(), t.signatures.clone(), [b.clone() for b in t.buckets],
               [w.clone() for w in t.merge_weights]) for t in traces]
    extra = torch.arange(4)
    with HostSyncCounter() as syncs:
        moved = traces_to_host(traces, [extra])
    assert syncs.count == 1 and torch.equal(moved[0], extra)
    for trace, (kept, scores, signatures, buckets, weights) in zip(traces, before, strict=True):
        assert torch.equal(trace.kept, kept) and torch.equal(trace.scores, scores)
        assert trace.signatures.dtype == torch.bool and torch.equal(trace.signatures, signatures)
        assert [b.tolist() for b in trace.buckets] == [b.tolist() for b in buckets]
        assert all(torch.equal(a, b) for a, b in zip(trace.merge_weights, weights, strict=True))
        assert trace.anchor is None and trace.crush_fraction == 0.25


def test_block_tokens_and_merge_rows_need_no_host_read():
    trace = _trace(0)
    trace.granularity, trace.block_size = "block", 2
    trace.blocks = torch.tensor([[0, 2], [2, 4], [4, 6], [6, 8], [8, 10], [10, 12], [12, 14]])
    with HostSyncCounter() as syncs:
        tokens = trace.representative_tokens()
        rows = trace.merge_rows()
    assert syncs.count == 0
    assert tokens.tolist() == [8, 9, 12, 13]  # token i of a representative block takes token i of each member
    assert rows.targets.tolist() == [8, 9, 12, 13] and rows.members.tolist() == [8, 9, 10, 11, 12, 13]
    assert rows.slot.tolist() == [0, 1, 0, 1, 2, 3]


def test_trace_on_host_copies_nothing_when_every_tensor_is_on_the_cpu():
    from kvcrush.trace import RunTrace, trace_on_host

    layers = [_trace(i) for i in range(3)]
    objects = [(t.kept, t.scores, t.buckets, *t.buckets) for t in layers]
    trace = RunTrace({"name": "kvcrush"}, "random:tiny", ["a"] * 10, 10, 0, False, layers)
    with HostSyncCounter() as syncs:
        assert trace_on_host(trace) is trace
    assert syncs.count == 0
    assert all(a is b for t, before in zip(layers, objects, strict=True)
               for a, b in zip((t.kept, t.scores, t.buckets, *t.buckets), before, strict=True))


def test_buckets_are_views_of_one_tensor_per_layer():
    trace = _trace(0)
    traces_to_host([trace])
    assert [b.tolist() for b in trace.buckets] == [[4, 5], [6]]
    storage = trace.bucket_members.untyped_storage().data_ptr()
    assert all(b.untyped_storage().data_ptr() == storage for b in trace.buckets)
    assert [w.shape[1] for w in trace.merge_weights] == [2, 1]


def test_nbytes_counts_every_tensor_of_a_trace():
    from kvcrush.trace import RunTrace

    layers = [_trace(i) for i in range(3)]
    layer = layers[0]
    expected = 6 * 8 + 16 * 4 + 8 * 1 + 2 * 8 + 3 * 8 + 2 * 4 + 6 * 4  # kept, scores, packed signatures, reps,
    assert layer.nbytes == expected                                   # bucket members and sizes, merge weights
    assert layer.field_nbytes() == {"kept": 48, "stored_scores": 64, "packed_signatures": 8, "representatives": 16,
                                    "bucket_members": 24, "bucket_sizes": 8, "merge_weight_rows": 24}
    assert RunTrace({"name": "kvcrush"}, "random:tiny", ["a"] * 10, 10, 0, False, layers).nbytes == 3 * expected
    layer.set_signatures(None)
    assert layer.nbytes == expected - 8


def test_compact_narrows_positions_and_keeps_their_values():
    trace = _trace(0)
    kept, buckets = trace.kept.clone(), [b.clone() for b in trace.buckets]
    trace.compact()
    assert trace.kept.dtype == torch.int32 and torch.equal(trace.kept, kept)
    assert [b.dtype for b in trace.buckets] == [torch.int32] * 2 and [b.tolist() for b in trace.buckets] == \
        [b.tolist() for b in buckets]
    assert trace.field_nbytes()["kept"] == 24 and trace.representatives.dtype == torch.int32


def test_scores_are_read_through_the_view_and_exported():
    from kvcrush.score_view import ScoreView
    from kvcrush.trace import to_jsonable

    source = torch.rand(4, 12)  # four query heads, two KV heads
    trace = _trace(0)
    trace.stored_scores = None
    trace.score_view = ScoreView(source, 2, "group", 2, 10)
    expected = source[:, 2:10].reshape(2, 2, 8).mean(dim=1)
    assert torch.allclose(trace.scores, expected) and "stored_scores" not in trace.field_nbytes()
    exported = to_jsonable(trace)
    assert torch.allclose(torch.tensor(exported["scores"]), expected)
    assert torch.equal(torch.tensor(exported["signatures"]), trace.signatures)
    assert "score_view" not in exported and "packed_signatures" not in exported
    assert torch.equal(trace.keep_scores().stored_scores, expected) and trace.score_view is None
