"""The Walk page's own figures (`ui.explain_plots`) stay bounded in marks at any prompt length, keep every
peak of the score lines and draw the ranks around the head's cut-off exactly."""

from __future__ import annotations

import numpy as np
import torch

from kvcrush.explain import WalkStep
from ui import explain_plots
from ui.plots import MAX_POINTS

N = 20_000


def _x(trace) -> np.ndarray:
    return np.asarray(trace.x)


def test_score_lines_are_min_max_envelopes():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.random((3, N)), dtype=torch.float32)
    scores[1, 12_345] = 9.0  # a lone peak must stay on the line
    positions = torch.arange(N) + 4
    fig = explain_plots.walk_figure(WalkStep("scores", "", "", data={"positions": positions, "scores": scores}), 1)
    for h, trace in enumerate(fig.data):
        assert len(trace.x) <= MAX_POINTS
        assert np.isclose(max(trace.y), float(scores[h].max())) and np.isclose(min(trace.y), float(scores[h].min()))
        assert (np.diff(_x(trace)) > 0).all()  # in position order
    assert 12_345 + 4 in _x(fig.data[1])
    small = explain_plots.walk_figure(WalkStep("scores", "", "", data={"positions": positions[:50],
                                                                       "scores": scores[:, :50]}), 0)
    assert len(small.data[0].x) == 50  # few units: every point


def test_cutoff_keeps_the_ranks_near_the_cut_off():
    ranked = torch.sort(torch.rand(N), descending=True).values
    cut = 7_001
    fig = explain_plots.walk_figure(WalkStep("cutoff", "", "", data={"sorted": ranked, "cutoff": cut}), 0)
    kept, below = (_x(t) for t in fig.data)
    assert len(kept) + len(below) <= MAX_POINTS
    assert kept.max() == cut and below.min() == cut + 1  # ranks are 1-based
    near = set(range(cut - explain_plots.NEAR_CUTOFF + 1, cut + explain_plots.NEAR_CUTOFF + 1))
    assert near <= set(kept.tolist()) | set(below.tolist())
    assert 1 in kept and N in below


def test_candidates_and_representatives_are_bounded():
    rng = np.random.default_rng(1)
    keeping = torch.tensor(rng.integers(0, 4, N))
    data = {"positions": torch.arange(N), "heads_keeping": keeping, "candidate": keeping == 0}
    fig = explain_plots.walk_figure(WalkStep("candidates", "", "", data=data), 0)
    assert all(len(t.x) <= MAX_POINTS for t in fig.data)
    counts = np.asarray(fig.data[1].customdata)[:, 0]
    assert counts.sum() == int((keeping == 0).sum())  # every candidate is counted in some marker
    assert set(np.asarray(fig.data[1].y).tolist()) == {0} and set(np.asarray(fig.data[0].y).tolist()) == {1, 2, 3}
    reps = {"positions": torch.arange(N) * 3, "sizes": torch.ones(N, dtype=torch.long),
            "distances": torch.tensor(rng.integers(0, 9, N))}
    fig = explain_plots.walk_figure(WalkStep("representatives", "", "", data=reps), 0)
    assert len(fig.data[0].x) <= MAX_POINTS
