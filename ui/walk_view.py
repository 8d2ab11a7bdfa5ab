"""Walk the algorithm (Walk page): one step of `kvcrush.explain.walk_steps` per screen, back and next.

The current step is remembered by its key, so changing the layer or head keeps the same step. Steps with a
figure of their own draw `ui.explain_plots`; distances, buckets and signatures reuse the Groups and
Signatures pages' figures on the same layer (`ui.unit_view.unit_view`), and the kept set the status strip.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kvcrush.explain import WalkStep
from kvcrush.trace import RunTrace, to_jsonable
from ui import explain_plots, export, plots
from ui.unit_view import cached, trace_cached, unit_view

STEP_KEY = "_walk_step"
SIGNATURE_ROWS = 80  # candidate rows shown in the signatures step (nearest the anchor first)


def current(steps: list[WalkStep]) -> int:
    """Index of the remembered step in `steps` (the first one when it is not among them)."""
    keys = [step.key for step in steps]
    key = st.session_state.get(STEP_KEY)
    return keys.index(key) if key in keys else 0


def _go(keys: list[str], index: int) -> None:
    st.session_state[STEP_KEY] = keys[index]


def navigation(steps: list[WalkStep]) -> int:
    """Back / next buttons and a jump list; returns the index of the step to show."""
    keys = [step.key for step in steps]
    index = current(steps)
    cols = st.columns([1, 1, 4])
    cols[0].button("◀ Back", key="walk_back", disabled=index == 0, on_click=_go, args=(keys, max(index - 1, 0)),
                   width="stretch")
    cols[1].button("Next ▶", key="walk_next", type="primary", disabled=index == len(keys) - 1, on_click=_go,
                   args=(keys, min(index + 1, len(keys) - 1)), width="stretch")
    with cols[2]:
        st.progress((index + 1) / len(keys), text=f"Step {index + 1} of {len(keys)}: {steps[index].title}")
    return index


def figure(step: WalkStep, trace: RunTrace, layer_index: int, head: int):
    """The step's figure (None when it has none), built once per run, layer, head and step (`ui.unit_view`' caches:
    a rerun sends the same figure again; the distances, buckets and signatures figures are the Groups and
    Signatures pages' own, shared with them)."""
    return trace_cached(trace, ("walk_figure", layer_index, head, step.key),
                        lambda: _figure(step, trace, layer_index, head))


def _figure(step: WalkStep, trace: RunTrace, layer_index: int, head: int):
    own = explain_plots.walk_figure(step, head)
    if own is not None:
        return own
    layer = trace.layers[layer_index]
    if step.key == "kept":
        status = step.data["status"].numpy()[None, :]
        return plots.status_strip(status, 0, (0, layer.n_tokens), f"KV head {head} of layer {layer_index}: "
                                                                  "what the compressed cache holds")
    view = unit_view(trace, layer)
    if view is None:
        return None
    if step.key == "distances":
        return cached(view, "distance_histogram", lambda: plots.distance_histogram(view))
    if step.key == "buckets":
        return cached(view, "bucket_figure", lambda: plots.bucket_figure(view))
    if step.key == "signatures":
        candidates = np.flatnonzero(view.candidate)
        rows = candidates[np.lexsort((view.starts[candidates], view.distances[candidates]))][:SIGNATURE_ROWS]
        return plots.signature_heatmap(view, rows, f"The {len(rows)} candidates nearest the anchor")
    return None


def render(step: WalkStep, trace: RunTrace, layer_index: int, head: int) -> None:
    """The step's title, sentences, figure and numbers."""
    with st.container(key="walk_step_view"):
        st.subheader(step.title)
        st.markdown(step.text)
        chart = figure(step, trace, layer_index, head)
        if chart is not None:
            st.plotly_chart(chart, key=f"walk_fig_{step.key}", config={"displayModeBar": False})
        numbers = pd.DataFrame({"value": [str(v) for v in step.numbers.values()]}, index=list(step.numbers))
        st.dataframe(numbers, key="walk_numbers")


def downloads(steps: list[WalkStep], name: str) -> None:
    """Every step's text and numbers as JSON and CSV (the arrays too in the JSON)."""
    rows = [{"step": i + 1, "key": s.key, "title": s.title, "text": s.text,
             **{f"n:{k}": v for k, v in s.numbers.items()}} for i, s in enumerate(steps)]
    cols = st.columns(2)
    with cols[0]:
        export.json_button(lambda: json.dumps(to_jsonable(steps)), f"walk-{name}", "walk_json", "All steps (JSON)")
    with cols[1]:
        export.csv_button(pd.DataFrame(rows), f"walk-{name}", "walk_csv", "All steps (CSV)")
