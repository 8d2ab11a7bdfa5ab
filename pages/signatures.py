"""Signatures: one layer's binary head signatures (units x heads), the anchor, distances and statuses."""

from __future__ import annotations

import streamlit as st

from kvcrush.trace import REPRESENTATIVE
from ui import export, page, pick, plots, runs
from ui.units import order, unit_view

MAX_ROWS = 400
SORTS = {"position": "position", "distance to the anchor": "distance"}

st.title("Signatures")
config, lm = page.context()
record = runs.current_run(config, lm)
if record is None:
    st.stop()
trace = record.result.trace
page.summary(record)

cols = st.columns([1, 2, 3])
layer_index = pick.layer("sig", len(trace.layers), cols[0])
sort_label = cols[1].radio("Sort rows by", list(SORTS), key="sig_sort", horizontal=True)
layer = trace.layers[layer_index]
view = unit_view(trace, layer)
if view is None:
    reason = ("this layer kept everything (the budget covers the prompt)" if layer.no_op
              else f"the policy is {record.label}; signatures are recorded by KVCrush runs")
    st.info(f"No signatures to show: {reason}. Pick **kvcrush** as the policy in the sidebar.")
    st.stop()

rows = order(view, SORTS[sort_label])
unit = "block" if view.granularity == "block" else "token"
start = 0
if view.n_units > MAX_ROWS:
    if st.session_state.get("sig_start", 0) >= view.n_units:
        st.session_state["sig_start"] = 0
    start = cols[2].slider(f"First row ({unit}s in the current order)", 0, view.n_units - 1, 0, step=10,
                           key="sig_start")
shown = rows[start : start + MAX_ROWS]
n_rep = int((view.status == REPRESENTATIVE).sum())
st.caption(
    f"Layer {layer_index}: {view.n_units:,} middle {unit}s × {view.bits.shape[1]} signature bits "
    f"({layer.signatures.shape[1]} {'query' if record.request.policy.signature_heads == 'query' else 'KV'} heads"
    f"{f' × {layer.block_size} tokens per block' if unit == 'block' else ''}); anchor mode "
    f"**{record.request.policy.anchor}**; {int(view.candidate.sum()):,} evicted candidates, "
    f"{n_rep} representatives. Showing rows {start:,}–{start + len(shown) - 1:,}."
)
with st.container(key="signature_view"):
    st.plotly_chart(plots.signature_heatmap(view, shown, f"Layer {layer_index}: signatures sorted by {sort_label}"),
                    key="sig_heatmap", config={"displayModeBar": False})
st.caption("Status column: green kept by at least one head's importance, orange KVCrush representative, "
           "grey evicted by every head. A bit is 1 when the token is in that head's top half of scores.")
with st.expander("Signature table and downloads"):
    frame = view.table().iloc[rows]
    st.dataframe(frame.iloc[start : start + MAX_ROWS], hide_index=True, key="sig_table")
    export.csv_button(frame, f"signatures-layer{layer_index}-{record.label}", "sig_csv")
    export.trace_json_button(record.result, f"{record.label}-{record.request.policy.budget_text}", "sig_json")
