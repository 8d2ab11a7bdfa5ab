"""Binning that keeps the explorer's figures bounded in marks whatever the prompt length (issue 23)."""

from __future__ import annotations

import numpy as np

from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE, SINK
from ui import plots
from ui.unit_view import UnitView


def test_bin_edges_cover_the_range_with_at_most_max_columns_bins():
    for n in (1, 7, 999, 1000, 1001, 7499, 100_000):
        edges = plots.bin_edges(n, 1000)
        assert edges[0] == 0 and edges[-1] == n
        assert 1 <= len(edges) - 1 <= 1000
        widths = np.diff(edges)
        assert (widths > 0).all() and len(set(widths[:-1].tolist())) <= 1 and widths[-1] <= widths[0]
    assert list(plots.bin_edges(5, 1000)) == [0, 1, 2, 3, 4, 5]  # short prompts: one column per token
    assert list(plots.bin_edges(10, 4)) == [0, 3, 6, 9, 10]
    assert list(plots.bin_edges(0, 4)) == [0]


def test_bin_mean_averages_each_bin_along_the_axis():
    values = np.arange(10, dtype=float)
    edges = plots.bin_edges(10, 4)
    assert plots.bin_mean(values, edges).tolist() == [1.0, 4.0, 7.0, 9.0]
    matrix = np.stack([values, 2 * values])
    assert plots.bin_mean(matrix, edges, axis=1).tolist() == [[1.0, 4.0, 7.0, 9.0], [2.0, 8.0, 14.0, 18.0]]
    assert plots.bin_mean(matrix.T, edges, axis=0).T.tolist() == [[1.0, 4.0, 7.0, 9.0], [2.0, 8.0, 14.0, 18.0]]
    low, high = plots.bin_min_max(np.array([5, 1, 3, 2, 9, 4]), np.array([0, 3, 6]))
    assert low.tolist() == [1, 2] and high.tolist() == [5, 9]


def test_kept_share_and_ones_share():
    statuses = np.array([[SINK, EVICTED, IMPORTANT, EVICTED, EVICTED, REPRESENTATIVE],
                         [EVICTED] * 6])
    share = plots.kept_share(statuses, np.array([0, 2, 4, 6]))
    assert share.tolist() == [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
    bits = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.uint8)
    assert plots.ones_share(bits, np.array([0, 2, 4])).tolist() == [[1.0, 0.5], [0.0, 0.5]]


def test_thin_keeps_first_last_and_at_most_the_limit():
    assert plots.thin(np.arange(5), 10).tolist() == [0, 1, 2, 3, 4]
    thinned = plots.thin(np.arange(10_000), 100)
    assert len(thinned) == 100 and thinned[0] == 0 and thinned[-1] == 9_999 and (np.diff(thinned) > 0).all()


def _strip_z(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z)


def test_status_strip_is_binned_beyond_max_columns_and_full_resolution_when_zoomed():
    rng = np.random.default_rng(0)
    statuses = rng.choice([EVICTED, IMPORTANT, REPRESENTATIVE], size=(30, 7_500)).astype(np.int64)
    whole = plots.status_strip(statuses, 3, (1000, 1400), "strip")
    z = _strip_z(whole)
    assert z.shape[0] == 30 and z.shape[1] <= plots.MAX_COLUMNS  # bounded whatever N is
    assert "binned" in whole.layout.title.text
    expected = np.rint(100 * (statuses[:, :8] != EVICTED).mean(axis=1))
    assert np.array_equal(z[:, 0], expected)  # 7,500 tokens in 938 columns of 8
    zoomed = plots.status_strip(statuses, 3, (1000, 1400), "strip", zoom=(900, 1500))
    z = _strip_z(zoomed)
    assert z.shape == (30, 600) and np.array_equal(z, statuses[:, 900:1500])  # token by token, status codes
    assert list(zoomed.data[0].x[:2]) == [900, 901]
    assert len(zoomed.layout.shapes) == 2  # the token window (inside the zoom) and the layer
    assert len(plots.status_strip(statuses, 3, (1000, 1400), "strip", zoom=(0, 500)).layout.shapes) == 1
    short = plots.status_strip(statuses[:, :300], 0, (0, 300), "strip")
    assert _strip_z(short).shape == (30, 300) and "binned" not in short.layout.title.text


def _view(n: int, width: int = 9, seed: int = 0) -> UnitView:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, width), dtype=np.uint8)
    anchor = (np.arange(width) % 2).astype(np.uint8)
    distances = (bits != anchor).sum(axis=1)
    candidate = rng.random(n) < 0.6
    status = np.where(candidate, EVICTED, IMPORTANT).astype(np.int8)
    cands = np.flatnonzero(candidate)
    order = cands[np.lexsort((cands, distances[cands]))]
    step = 4
    bucket = np.full(n, -1, dtype=np.int64)
    for index, first in enumerate(range(0, len(order) - step + 1, step)):
        bucket[order[first:first + step]] = index
        status[order[first]] = REPRESENTATIVE
    starts = np.arange(10, 10 + n)
    return UnitView("token", starts, starts + 1, bits, anchor, distances, status, bucket, candidate,
                    [f"t{i}" for i in range(n)], [f"h{h}" for h in range(width)])


def _points(fig) -> int:
    return sum(len(trace.x) for trace in fig.data if getattr(trace, "x", None) is not None)


def test_bucket_figure_and_histogram_are_bounded_for_long_prompts():
    small, large = _view(500), _view(7_400)
    n_reps = int((small.status == REPRESENTATIVE).sum())
    assert _points(plots.bucket_figure(small)) == int(small.candidate.sum()) + n_reps
    figure = plots.bucket_figure(large, max_points=500)
    assert _points(figure) <= 1_000 and "binned" in figure.layout.title.text
    binned = figure.data[0]
    low, high = binned.customdata[:, 2], binned.customdata[:, 3]
    assert (low <= binned.y + 1e-6).all() and (binned.y <= high + 1e-6).all()
    assert binned.customdata[-1, 1] == int(large.candidate.sum()) - 1  # the bins cover every candidate rank
    hist = plots.distance_histogram(large)
    assert hist.data[0].name.startswith("KVCrush representative")
    assert all(len(trace.x) <= 10 for trace in hist.data)  # one bar per distance 0..9, not one value per unit
    evicted = large.candidate & (large.status == EVICTED)
    assert sum(hist.data[1].y) == int(evicted.sum())


def test_signature_overview_and_map_sample_are_bounded():
    view = _view(7_400)
    figure = plots.signature_overview(view.bits, view.starts, view.bit_labels, (100, 499), "overview")
    z = np.asarray(figure.data[0].z)
    assert z.shape[0] == 9 and z.shape[1] <= plots.MAX_COLUMNS
    assert z[0, 0] == round(100 * view.bits[:8, 0].mean())
    rows = plots.sample_units(view, 1_000)
    assert len(rows) <= 1_000 and (np.diff(rows) > 0).all()
    reps = np.flatnonzero(view.status == REPRESENTATIVE)
    assert set(plots.thin(reps, 1_000).tolist()) <= set(rows.tolist())
    subset = plots.take_units(view, rows)
    assert subset.n_units == len(rows) and subset.bits.shape == (len(rows), 9) and len(subset.labels) == len(rows)
    assert plots.sample_units(_view(300), 1_000).tolist() == list(range(300))
