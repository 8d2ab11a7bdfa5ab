"""The explanation views' helpers on real traces of the tiny model (no Streamlit session needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kvcrush
from kvcrush import explain
from kvcrush.attention_use import CATEGORIES, AttentionRecorder
from kvcrush.trace import EVICTED
from ui import attention_view, explain_plots, span_view, walk_view, why_view


@pytest.fixture(scope="module")
def recorded():
    lm = kvcrush.load_model("random:tiny", device="cpu")
    from kvcrush.data import essay_text

    prepared = kvcrush.prepare(lm, essay_text()[:2600], question="What is it about?")
    recorder = AttentionRecorder()
    result = prepared.generate(kvcrush.make_policy("kvcrush", 0.3), max_new_tokens=4, observer=recorder)
    return result, recorder.result


def test_fate_frame_lists_every_layer_head_that_lost_the_span(recorded):
    trace = recorded[0].trace
    fate = explain.span_fate(trace, 200, 230)
    frame = span_view.fate_frame(fate)
    assert len(frame) == len(fate.lost())
    for row, item in zip(frame.itertuples(index=False), fate.lost(), strict=True):
        assert (row.layer, row.kv_head) == (item.layer, item.head)
        assert row.evicted.split() == [f"#{p}" for p in item.missing]
    figure = explain_plots.fate_grid(fate.codes.numpy(), (0, 1), "span")
    squares = figure.data[0]
    assert list(squares.text) == [explain.FATE_NAMES[c] for c in fate.codes.flatten().tolist()]
    assert [t.name.split(" (")[0] for t in figure.data[1:5]] == list(explain.FATE_NAMES)


def test_why_table_has_one_row_per_layer_and_head(recorded):
    trace = recorded[0].trace
    why = explain.why_token(trace, 150)
    frame = why_view.table(why)
    assert len(frame) == len(trace.layers) * trace.layers[0].kept.shape[0]
    assert frame["rank"].tolist() == [d.rank for d in why.decisions]
    shown = [None if pd.isna(value) else int(value) for value in frame["stand-in #"]]
    assert shown == [d.representative for d in why.decisions]


def test_walk_figures_exist_for_every_step(recorded):
    trace = recorded[0].trace
    for step in explain.walk_steps(trace, 1, 0):
        figure = walk_view.figure(step, trace, 1, 0)
        assert figure is not None, step.key
        assert figure.data, step.key
    cutoff = next(s for s in explain.walk_steps(trace, 1, 0) if s.key == "cutoff")
    kept_trace = explain_plots.walk_figure(cutoff, 0).data[0]
    assert len(kept_trace.x) == cutoff.data["cutoff"]  # the ranks kept by importance, drawn apart


def test_attention_frames_and_status_labels(recorded):
    result, use = recorded
    by_layer = attention_view.shares_frame(use, "layer", list(range(len(result.trace.layers))))
    assert list(by_layer.columns) == ["layer", *CATEGORIES]
    np.testing.assert_allclose(by_layer[list(CATEGORIES)].sum(axis=1), 1.0, rtol=1e-5)
    positions = [p for p, _ in use.top_prompt_tokens(5)]
    for position, (status, kept) in zip(positions, attention_view.prompt_status(result.trace, positions),
                                        strict=True):
        fate = explain.span_fate(result.trace, position, position + 1)
        assert kept == int(fate.kept.sum())
        assert (status == EVICTED) == (kept == 0)
    figure = explain_plots.attention_by_layer(use)
    assert [t.name for t in figure.data[: len(CATEGORIES)]] == list(CATEGORIES)
