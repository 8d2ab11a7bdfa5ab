"""Walk: one layer of the current run through KVCrush's steps in the spec's order, one step per screen.

Scores and the budget split, the importance cut-off, candidates, signatures, the anchor(s), distances,
buckets, representatives and the final kept set, each with the run's real numbers (`kvcrush.explain.walk_steps`).
"""

from __future__ import annotations

import streamlit as st

from kvcrush import explain
from ui import page, pick, runs, walk_view
from ui.unit_view import trace_cached

opened = page.single_run("Walk")
live = opened.live
trace = live.trace
runs.begin_answer(live)  # the answer decodes while the step renders

cols = st.columns([1, 1, 4])
layer_index = pick.layer("walk", len(trace.layers), cols[0])
head_index = pick.head("walk", trace.layers[0].kept.shape[0], cols[1])
cols[2].markdown(f"<div style='padding-top:1.9rem'>{live.request.policy.label} at {live.request.policy.budget_text}"
                 f" · {page.trace_notes(trace)}</div>", unsafe_allow_html=True)
# The steps of a run, layer and head never change: made once and read back on every rerun (`ui.unit_view.trace_cached`).
steps = trace_cached(trace, ("walk_steps", layer_index, head_index),
                     lambda: explain.walk_steps(trace, layer_index, head_index))
if trace.layers[layer_index].signatures is None and not trace.layers[layer_index].no_op:
    st.info(f"The policy is {live.request.policy.label}: the walk shows its scores, cut-off and kept set. KVCrush's "
            "steps (candidates, signatures, anchor, distances, buckets, representatives) need a kvcrush run.")
index = walk_view.navigation(steps)
walk_view.render(steps[index], trace, layer_index, head_index)
with st.expander("Downloads"):
    walk_view.downloads(steps, f"{live.request.policy.label}-layer{layer_index}-head{head_index}")

opened.finish()
