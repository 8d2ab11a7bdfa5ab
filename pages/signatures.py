"""Signatures: one layer's binary head signatures (units x heads), the anchor, distances and statuses.

An overview draws every unit's bits binned along the prompt (at most `plots.MAX_COLUMNS` columns); the matrix
below draws `MAX_ROWS` rows at full resolution from "First row" on, so neither grows with the prompt.

Rendered from the selection; the run's answer decodes meanwhile and streams in (see `ui.runs`).
"""

from __future__ import annotations

import streamlit as st

from kvcrush.trace import REPRESENTATIVE
from ui import export, page, pick, plots, runs
from ui.unit_view import order

MAX_ROWS = 400
SORTS = {"position": "position", "distance to the anchor": "distance"}


def render(live: runs.LiveRun) -> None:
    trace = live.trace
    policy = live.request.policy
    cols = st.columns([1, 2, 3])
    layer_index = pick.layer("sig", len(trace.layers), cols[0])
    sort_label = cols[1].radio("Sort rows by", list(SORTS), key="sig_sort", horizontal=True)
    layer = trace.layers[layer_index]
    view = page.kvcrush_view(trace, layer, policy.label, "signatures")
    if view is None:
        return

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
    heads = "query" if trace.policy.get("signature_heads", "query") == "query" else "KV"
    st.caption(
        f"Layer {layer_index}: {view.n_units:,} middle {unit}s × {view.bits.shape[1]} signature bits "
        f"({layer.signatures.shape[1]} {heads} heads"
        f"{f' × {layer.block_size} tokens per block' if unit == 'block' else ''}); anchor mode "
        f"**{trace.policy.get('anchor')}**; {int(view.candidate.sum()):,} evicted candidates, "
        f"{n_rep} representatives. Showing rows {start:,}–{start + len(shown) - 1:,}."
    )
    with st.container(key="signature_overview"):
        # Every unit at a glance, binned to at most plots.MAX_COLUMNS columns; the rows drawn in full below are
        # the zoom (outlined here when they are a run of positions).
        outline = (int(view.starts[shown].min()), int(view.starts[shown].max())) if len(shown) and \
            SORTS[sort_label] == "position" else None
        st.plotly_chart(plots.signature_overview(view.bits, view.starts, view.bit_labels, outline,
                                                 f"Layer {layer_index}: share of 1-bits along the prompt"),
                        key="sig_overview", config={"displayModeBar": False})
    with st.container(key="signature_view"):
        st.plotly_chart(plots.signature_heatmap(view, shown, f"Layer {layer_index}: signatures sorted by {sort_label}"),
                        key="sig_heatmap", config={"displayModeBar": False})
    runs.begin_answer(live, runs.HEAD_START_S)  # the selection is shown; the rest draws while it decodes
    st.caption("Status column: green kept by at least one head's importance, orange KVCrush representative, "
               "grey evicted by every head. A bit is 1 when the token is in that head's top half of scores.")
    with st.expander("Signature table and downloads"):
        frame = view.table().iloc[rows]
        st.dataframe(frame.iloc[start : start + MAX_ROWS], hide_index=True, key="sig_table")
        export.csv_button(frame, f"signatures-layer{layer_index}-{policy.label}", "sig_csv")
        export.trace_json_button(live.latest, f"{policy.label}-{policy.budget_text}", "sig_json")


opened = page.single_run("Signatures")
render(opened.live)
opened.finish()
