"""Groups: distances of the evicted candidates, KVCrush's buckets and representatives, a map of signatures.

Rendered from the selection; the run's answer decodes meanwhile and streams in (see `ui.runs`). The layer's view
(`ui.unit_view.unit_view`) and everything drawn from it (the bucket table, the figures, the mapped sample and its map)
are built once per run, layer and choice (`ui.unit_view.cached`): a rerun that changes none of them only sends them.
"""

from __future__ import annotations

import streamlit as st

from ui import embedding, export, page, pick, plots, runs
from ui.unit_view import bucket_table, cached

COLOR_BY = {"kept / evicted / representative": "status", "bucket": "bucket", "distance to the anchor": "distance"}
ANCHOR_COLOR = {"nearest anchor": "anchor"}  # offered when the run grouped around several anchors


def render(live: runs.LiveRun) -> None:
    trace = live.trace
    policy = live.request.policy
    layer_index = pick.layer("grp", len(trace.layers), st.columns([1, 4])[0])
    layer = trace.layers[layer_index]
    view = page.kvcrush_view(trace, layer, policy.label, "groups")
    if view is None:
        return

    unit = "block" if view.granularity == "block" else "token"
    anchors = ""
    if view.n_anchors > 1:
        sizes = ", ".join(str(int(((view.groups == g) & view.candidate).sum())) for g in range(view.n_anchors))
        anchors = (f" Grouped around {view.n_anchors} anchors ({trace.policy.get('anchor_mode', 'fixed')}); "
                   f"candidates per anchor: {sizes}.")
    st.caption(f"Layer {layer_index}: {int(view.candidate.sum()):,} evicted candidate {unit}s, "
               f"{len(layer.buckets)} buckets, {layer.crush_used:,} of {layer.crush:,} KVCrush tokens used."
               + anchors)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(cached(view, "distance_histogram", lambda: plots.distance_histogram(view)), key="grp_hist",
                        config={"displayModeBar": False})
    with right:
        st.plotly_chart(cached(view, "bucket_figure", lambda: plots.bucket_figure(view)), key="grp_buckets",
                        config={"displayModeBar": False})

    buckets = cached(view, "bucket_table", lambda: bucket_table(view))
    with st.container(key="bucket_table"):
        st.markdown("**Buckets**: each representative stands in for the evicted candidates next to it in the "
                    "distance order.")
        st.dataframe(buckets, hide_index=True, key="grp_table", height=260)
        export.csv_button(buckets, f"buckets-layer{layer_index}-{policy.label}", "grp_csv")
    runs.begin_answer(live, runs.HEAD_START_S)  # the selection is shown; the map is fitted while it decodes

    st.subheader("Map of the signatures")
    cols = st.columns([1, 2, 3])
    methods = list(embedding.METHODS)
    method = cols[0].radio("Projection", methods, index=methods.index(embedding.default_method()),
                           key="grp_projection",
                           help="UMAP (umap-learn, Hamming metric) is slow the first time; PCA is instant.")
    color_by = {**COLOR_BY, **ANCHOR_COLOR} if view.n_anchors > 1 else COLOR_BY
    if st.session_state.get("grp_color") not in (None, *color_by):  # "nearest anchor" left from a several-anchor run
        del st.session_state["grp_color"]
    color_label = cols[1].radio("Colour by", list(color_by), key="grp_color", horizontal=True)
    # At most plots.MAX_POINTS units are mapped (every representative, the rest evenly along the prompt), so
    # the fit and the figure cost the same whatever the prompt length.
    rows, mapped = cached(view, ("mapped", plots.MAX_POINTS), lambda: _sample(view))
    sampled = (f" A sample of {len(rows):,} of the {view.n_units:,} {unit}s is mapped: every representative, the "
               "others evenly along the prompt.") if len(rows) < view.n_units else ""
    seed = int(trace.policy.get("seed") or 0)

    def fit():
        with st.spinner(f"Fitting {method} on {mapped.n_units:,} signatures (the first UMAP fit takes a while)…"):
            return embedding.embed(mapped.bits, method, seed=seed)

    coords, used, note = cached(mapped, ("embed", method, seed), fit)
    cols[2].caption(f"{used}: {note}. Identical signatures are spread slightly so their count shows.{sampled}")
    with st.container(key="embedding_view"):
        figure = cached(mapped, ("map", method, seed, color_by[color_label]),
                        lambda: plots.embedding_scatter(coords, mapped, color_by[color_label], used))
        st.plotly_chart(figure, key="grp_map", config={"displayModeBar": False})


def _sample(view):
    """(rows, view of those rows): at most `plots.MAX_POINTS` units to map (`plots.sample_units`)."""
    rows = plots.sample_units(view)
    return rows, (plots.take_units(view, rows) if len(rows) < view.n_units else view)


opened = page.single_run("Groups")
render(opened.live)
opened.finish()
