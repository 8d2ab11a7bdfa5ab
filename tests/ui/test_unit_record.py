"""ui.unit_view reads the library's per-unit record (`kvcrush.explain.units.unit_marks` / `layer_units`) and builds
each layer's view once; its tables agree with a plain per-bucket reference."""

from __future__ import annotations

import numpy as np
import pytest

import kvcrush
from kvcrush.explain.units import layer_units, unit_marks
from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE
from ui import unit_view as units


@pytest.fixture(scope="module")
def prepared():
    lm = kvcrush.load_model("random:tiny", device="cpu")
    return kvcrush.prepare(lm, "Alpha beta\ngamma, delta epsilon zeta eta theta. " * 40)


OPTIONS = [{}, {"granularity": "block", "block_size": 4}, {"anchors": 3},
           {"granularity": "block", "block_size": 4, "anchors": 2}, {"representative": "best"}]


def _reference_buckets(view: units.UnitView, preview: int = 6) -> list[tuple]:
    rows = []
    for index in range(int(view.bucket.max()) + 1 if view.n_units and view.bucket.max() >= 0 else 0):
        members = np.flatnonzero(view.bucket == index)
        members = members[np.lexsort((view.starts[members], view.distances[members]))]
        reps = [m for m in members if view.status[m] == REPRESENTATIVE]
        rep = reps[0] if reps else members[0]
        rows.append((index, f"#{view.starts[rep]} {view.labels[rep]}", len(members),
                     f"{view.distances[members].min()}–{view.distances[members].max()}",
                     " · ".join(f"#{view.starts[m]} {view.labels[m]}" for m in members[:preview])
                     + (" …" if len(members) > preview else "")))
    return rows


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("budget", [0.2, 0.5])
def test_the_view_is_the_library_record(prepared, options, budget):
    trace = prepared.select(kvcrush.make_policy("kvcrush", budget, **options))
    for layer in trace.layers:
        view = units.unit_view(trace, layer)
        marks = unit_marks(layer)
        if view is None:
            assert marks is None or layer.anchor is None
            continue
        record = layer_units(layer)
        assert np.array_equal(view.bucket, record.bucket.numpy())
        assert np.array_equal(view.status == REPRESENTATIVE, record.is_representative.numpy())
        assert np.array_equal(view.candidate, record.candidates().numpy())
        # kept by some head: any of the unit's tokens in some head's kept set
        kept = np.zeros(layer.n_tokens, dtype=bool)
        kept[layer.kept.reshape(-1).numpy()] = True
        expected = np.array([kept[s:e].any() for s, e in zip(view.starts, view.ends, strict=True)])
        assert np.array_equal(view.status != EVICTED, expected)
        assert set(np.unique(view.status)) <= {IMPORTANT, REPRESENTATIVE, EVICTED}
        table = units.bucket_table(view)
        assert [tuple(row) for row in table[["bucket", "representative", "size", "distance", "members"]]
                .itertuples(index=False)] == _reference_buckets(view)
        if view.n_anchors > 1:
            assert table["anchor"].tolist() == [int(view.groups[view.bucket == b][0]) for b in table["bucket"]]


def test_a_view_is_built_once_per_layer_and_memoised(prepared):
    trace = prepared.select(kvcrush.make_policy("kvcrush", 0.3))
    layer = trace.layers[0]
    view = units.unit_view(trace, layer)
    assert units.unit_view(trace, layer) is view
    calls = []
    first = units.cached(view, "thing", lambda: calls.append(1) or object())
    assert units.cached(view, "thing", lambda: calls.append(1) or object()) is first and calls == [1]
    again = prepared.select(kvcrush.make_policy("kvcrush", 0.3))  # an equal trace, another object: its own view
    assert units.unit_view(again, again.layers[0]) is not view
    steps = units.trace_cached(trace, ("steps", 0), lambda: [1, 2])
    assert units.trace_cached(trace, ("steps", 0), lambda: [3]) is steps


def test_labels_and_signatures_are_vectorised_faithfully():
    tokens = ["a", "\n", "b" * 50, "c", "d", "e"]
    labels = units.unit_labels(tokens, np.array([0, 1, 2]), np.array([1, 2, 3]))
    assert labels == ["a", "↵", "b" * 39 + "…"]
    assert units.unit_labels(tokens, np.array([0, 3]), np.array([3, 6]))[1] == "cde"
    assert units.signature_strings(np.array([[0, 1, 1], [1, 0, 0]], dtype=np.uint8)).tolist() == ["011", "100"]
