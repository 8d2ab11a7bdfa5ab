"""Plotly figure builders. Colours come from `ui.colors` only, so statuses and policies look the
same on every page. Builders take plain arrays, never recompute a policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE, STATUS_NAMES
from ui.colors import (
    CONTINUOUS_SCALE,
    OKABE_ITO,
    SEQUENCE,
    STATUS_COLORS,
    STATUS_LABELS,
    STATUS_SHORT,
    bucket_color,
    policy_color,
    status_colorscale,
)
from ui.unit_view import UnitView, candidate_order

N_STATUS = len(STATUS_NAMES)
# Status names per cell cost about 11 bytes each in the chart spec: a 30-layer x 2k-token strip was 690 KB,
# 0.2 s to serialise and 0.3 s for the browser to draw, on every budget change. Larger strips hover
# without the name (the colours follow the legend above them).
MAX_HOVER_CELLS = 20_000
BIT_SCALE = [[0.0, "#F7F7F7"], [0.5, "#F7F7F7"], [0.5, OKABE_ITO["blue"]], [1.0, OKABE_ITO["blue"]]]


# Views stay bounded in marks whatever the prompt length N (issue 23): a strip or matrix along the prompt draws at
# most MAX_COLUMNS columns (wider ones are binned: each column aggregates `width` consecutive positions), and a
# scatter along the candidates at most MAX_POINTS markers. A zoom (a range of positions no wider than MAX_COLUMNS)
# draws at full resolution.
MAX_COLUMNS = 1_000
MAX_POINTS = 2_000


def bin_edges(n: int, max_columns: int = MAX_COLUMNS) -> np.ndarray:
    """`[bins + 1]` edges cutting `[0, n)` into consecutive bins of one width (the last may be shorter), with at
    most `max_columns` bins: width 1 (one bin per position) when `n <= max_columns`."""
    if n <= 0:
        return np.zeros(1, dtype=np.int64)
    width = -(-n // max(1, max_columns))  # ceil
    return np.append(np.arange(0, n, width, dtype=np.int64), n)


def bin_mean(values: np.ndarray, edges: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of `values` over each bin `[edges[i], edges[i + 1])` along `axis` (NaN-free input; bool counts as 0/1)."""
    values = np.asarray(values, dtype=np.float64)
    axis = axis % values.ndim
    if edges.size < 2:
        shape = list(values.shape)
        shape[axis] = 0
        return np.zeros(shape)
    sums = np.add.reduceat(values, edges[:-1], axis=axis)
    widths = np.diff(edges).astype(np.float64)
    shape = [1] * values.ndim
    shape[axis] = len(widths)
    return sums / widths.reshape(shape)


def bin_min_max(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin minimum and maximum of a 1-D array."""
    values = np.asarray(values)
    if edges.size < 2:
        return values[:0], values[:0]
    return np.minimum.reduceat(values, edges[:-1]), np.maximum.reduceat(values, edges[:-1])


def kept_share(statuses: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`[rows, bins]` share of tokens kept (any status but evicted) per bin of a `[rows, n]` status matrix."""
    return bin_mean(np.asarray(statuses) != EVICTED, edges, axis=1)


def ones_share(bits: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`[bins, width]` fraction of 1-bits per bin of a `[units, width]` signature matrix (bins over the units)."""
    return bin_mean(np.asarray(bits) > 0, edges, axis=0)


def zoom_range(n: int, start: int, end: int) -> tuple[int, int]:
    """`[start, end)` clipped to `[0, n)`, at least one position wide."""
    start = int(max(0, min(start, n - 1)))
    end = int(max(start + 1, min(end, n)))
    return start, end


def thin(indices: np.ndarray, limit: int = MAX_POINTS) -> np.ndarray:
    """At most `limit` of `indices`, evenly spaced (first and last kept); all of them when there are fewer."""
    indices = np.asarray(indices)
    if len(indices) <= limit:
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, limit).round().astype(np.int64))]


def _layout(fig: go.Figure, height: int, **kwargs) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), template="plotly_white", **kwargs)
    return fig


def status_strip(statuses: np.ndarray, layer: int, window: tuple[int, int], title: str,
                 zoom: tuple[int, int] | None = None, max_columns: int = MAX_COLUMNS) -> go.Figure:
    """Every layer x the tokens of one KV head (`statuses`, `[layers, n]` codes): the window and layer outlined.

    `zoom` (`[start, end)`, default the whole prompt) is the range drawn. Up to `max_columns` tokens it is drawn
    at full resolution, coloured by status; a wider range is binned (`bin_edges`) and each column shows the share
    of its tokens kept, so the figure never holds more than layers x `max_columns` cells.
    """
    n_layers, n_tokens = statuses.shape
    lo, hi = zoom_range(n_tokens, *(zoom or (0, n_tokens)))
    part = statuses[:, lo:hi]
    edges = bin_edges(hi - lo, max_columns)
    width = int(edges[1] - edges[0]) if len(edges) > 1 else 1
    if width == 1:
        hover = None
        if part.size <= MAX_HOVER_CELLS:
            names = np.array([STATUS_SHORT[i] for i in range(N_STATUS)], dtype=object)
            hover = names[part]
        heat = go.Heatmap(
            z=part.astype(np.int8), x=np.arange(lo, hi, dtype=np.int32), zmin=-0.5, zmax=N_STATUS - 0.5,
            colorscale=status_colorscale(), showscale=False, text=hover,
            hovertemplate="layer %{y} · token %{x}<br>%{text}<extra></extra>" if hover is not None
            else "layer %{y} · token %{x}<extra></extra>", xgap=0, ygap=1)
    else:
        share = np.rint(100 * kept_share(part, edges)).astype(np.uint8)  # percent: one byte per cell in the spec
        heat = go.Heatmap(
            z=share, x=(lo + edges[:-1] + (np.diff(edges) - 1) / 2).astype(np.float32), zmin=0, zmax=100,
            colorscale=[[0.0, STATUS_COLORS[EVICTED]], [1.0, STATUS_COLORS[IMPORTANT]]],
            colorbar=dict(title="% kept", thickness=10, len=0.8), xgap=0, ygap=1,
            hovertemplate=f"layer %{{y}} · {width} tokens around %{{x:.0f}}<br>%{{z}}% kept<extra></extra>")
        title = f"{title} · binned: {width} tokens per column"
    fig = go.Figure(heat)
    start, end = max(window[0], lo), min(window[1], hi)
    if start < end:  # the token window, where it overlaps the range drawn
        fig.add_shape(type="rect", x0=start - 0.5, x1=end - 0.5, y0=-0.5, y1=n_layers - 0.5,
                      line=dict(color=OKABE_ITO["black"], width=2))
    fig.add_shape(type="rect", x0=lo - 0.5, x1=hi - 0.5, y0=layer - 0.5, y1=layer + 0.5,
                  line=dict(color=OKABE_ITO["vermillion"], width=2))
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title="token position", range=[lo - 0.5, hi - 0.5])
    return _layout(fig, int(min(420, max(150, 70 + 9 * n_layers))), title=title)


def signature_overview(bits: np.ndarray, starts: np.ndarray, bit_labels: list[str], shown: tuple[int, int] | None,
                       title: str, max_columns: int = MAX_COLUMNS) -> go.Figure:
    """Every unit's signature at a glance: bits along the prompt (x) per head (y), binned to at most
    `max_columns` columns (each the fraction of 1-bits of its units); `shown` (`[first, last]` unit
    positions of the rows drawn in full below) is outlined."""
    n_units = len(starts)
    edges = bin_edges(n_units, max_columns)
    share = np.rint(100 * ones_share(bits, edges)).astype(np.uint8).T  # [width, bins], percent
    x = starts[edges[:-1]] if n_units else np.zeros(0, dtype=np.int64)
    width = int(edges[1] - edges[0]) if len(edges) > 1 else 1
    fig = go.Figure(go.Heatmap(
        z=share, x=x.astype(np.int32), y=list(bit_labels), zmin=0, zmax=100, colorscale=[[0.0, "#F7F7F7"],
                                                                                         [1.0, OKABE_ITO["blue"]]],
        colorbar=dict(title="% 1-bits", thickness=10, len=0.8), xgap=0,
        hovertemplate=f"%{{y}} · {width} unit(s) from #%{{x}}: %{{z}}% 1-bits<extra></extra>"))
    if shown is not None:
        fig.add_shape(type="rect", x0=shown[0] - 0.5, x1=shown[1] + 0.5, y0=-0.5, y1=len(bit_labels) - 0.5,
                      line=dict(color=OKABE_ITO["vermillion"], width=2))
    fig.update_yaxes(autorange="reversed", showticklabels=len(bit_labels) <= 40)
    fig.update_xaxes(title="position of the unit's first token")
    suffix = f" · binned: {width} units per column" if width > 1 else ""
    return _layout(fig, int(min(320, max(160, 90 + 8 * len(bit_labels)))), title=title + suffix)


def head_grid(values: np.ndarray, kept: np.ndarray, agreement: np.ndarray, selected: tuple[int, int],
              color_label: str) -> go.Figure:
    """Layer x KV-head grid of square markers (selectable points; heatmap selections do not work)."""
    n_layers, n_heads = values.shape
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    height = int(min(900, max(220, 110 + 22 * n_layers)))
    size = max(8, min(34, int((height - 110) / max(n_layers, 1) * 0.85)))
    fig = go.Figure(go.Scatter(
        x=heads.ravel(), y=layers.ravel(), mode="markers",
        marker=dict(symbol="square", size=size, color=values.ravel(), colorscale=CONTINUOUS_SCALE, cmin=0, cmax=1,
                    colorbar=dict(title=color_label, thickness=12)),
        customdata=np.stack([kept.ravel(), agreement.ravel()], axis=1),
        hovertemplate="layer %{y} · head %{x}<br>keeps %{customdata[0]:.1%} of tokens"
                      "<br>agreement with other heads %{customdata[1]:.2f}<extra></extra>",
        name="heads",
    ))
    layer, head = selected
    fig.add_trace(go.Scatter(
        x=[head], y=[layer], mode="markers", hoverinfo="skip", showlegend=False, name="selected",
        marker=dict(symbol="square-open", size=size + 6, color=OKABE_ITO["vermillion"], line=dict(width=3)),
    ))
    fig.update_xaxes(title="KV head", tickmode="array", tickvals=list(range(n_heads)), range=[-0.6, n_heads - 0.4])
    fig.update_yaxes(title="layer", range=[n_layers - 0.5, -0.5], dtick=1 if n_layers <= 32 else 4)
    return _layout(fig, height, showlegend=False)  # Streamlit sets clickmode/dragmode for point selection


def signature_heatmap(view: UnitView, rows: np.ndarray, title: str) -> go.Figure:
    """Status | distance | signature bits for the given unit rows, with the anchor as its own row."""
    labels = [f"#{view.starts[i]} {view.labels[i]}" for i in rows]
    fig = make_subplots(rows=2, cols=3, shared_xaxes="columns", shared_yaxes="rows", horizontal_spacing=0.01,
                        vertical_spacing=0.02, column_widths=[0.05, 0.07, 0.88],
                        row_heights=[0.04, 0.96] if len(rows) > 60 else [0.12, 0.88],
                        subplot_titles=("status", "distance", "signature bits (1 = in the head's top half)"))
    width = max(1, view.bits.shape[1])
    fig.add_trace(go.Heatmap(z=[[None]], x=["s"], y=["anchor"], showscale=False, hoverinfo="skip",
                             name="anchor label"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=[[view.anchor.sum()]], x=["d"], y=["anchor"], name="anchor set bits",
                             colorscale=CONTINUOUS_SCALE, showscale=False, zmin=0, zmax=width,
                             hovertemplate="anchor: %{z} set bits<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Heatmap(z=view.anchor[None, :], x=view.bit_labels, y=["anchor"], name="anchor",
                             colorscale=BIT_SCALE, zmin=0, zmax=1, showscale=False,
                             hovertemplate="anchor · %{x}: %{z}<extra></extra>"), row=1, col=3)
    status = view.status[rows]
    fig.add_trace(go.Heatmap(
        z=status[:, None], x=["s"], y=labels, name="status", zmin=-0.5, zmax=N_STATUS - 0.5,
        colorscale=status_colorscale(), showscale=False, text=[[STATUS_LABELS[int(s)]] for s in status],
        hovertemplate="%{y}<br>%{text}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Heatmap(
        z=view.distances[rows][:, None], x=["d"], y=labels, name="distance", colorscale=CONTINUOUS_SCALE, zmin=0,
        zmax=width, showscale=False, hovertemplate="%{y}<br>distance to anchor %{z}<extra></extra>"), row=2, col=2)
    fig.add_trace(go.Heatmap(
        z=view.bits[rows], x=view.bit_labels, y=labels, name="bits", colorscale=BIT_SCALE, zmin=0, zmax=1,
        showscale=False, xgap=2 if len(view.bit_labels) <= 40 else 0,
        hovertemplate="%{y} · %{x}: %{z}<extra></extra>"), row=2, col=3)
    show_ticks = len(rows) <= 60
    fig.update_yaxes(autorange="reversed", showticklabels=show_ticks, row=2, col=1)
    fig.update_yaxes(showticklabels=True, row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=2)
    fig.update_xaxes(showticklabels=len(view.bit_labels) <= 40, row=2, col=3)
    for annotation in fig.layout.annotations:
        annotation.font.size = 11
    height = int(min(1400, max(320, 140 + 13 * len(rows))))
    return _layout(fig, height, title=title)


def distance_histogram(view: UnitView) -> go.Figure:
    """Hamming distances to the anchor: representatives, the evicted candidates they stand for, kept units.

    Counted here (one bar per distance), so the figure holds at most `width + 1` bars per group, not one
    value per unit."""
    fig = go.Figure()
    groups = [
        ("KVCrush representative", view.candidate & (view.status == REPRESENTATIVE), STATUS_COLORS[REPRESENTATIVE],
         True),
        ("evicted candidate", view.candidate & (view.status == EVICTED), "#9a9a9a", True),
        ("kept by importance", ~view.candidate & (view.status == IMPORTANT), STATUS_COLORS[IMPORTANT], "legendonly"),
    ]
    for name, mask, color, visible in groups:
        counts = np.bincount(view.distances[mask].astype(np.int64), minlength=1) if mask.any() else np.zeros(0)
        present = np.flatnonzero(counts)
        fig.add_trace(go.Bar(x=present.astype(np.int32), y=counts[present].astype(np.int32),
                             name=f"{name} ({int(mask.sum())})", marker_color=color, visible=visible,
                             hovertemplate="distance %{x}: %{y} units<extra></extra>"))
    fig.update_layout(barmode="stack", bargap=0.05)
    anchor = "its nearest anchor" if view.n_anchors > 1 else "the anchor"
    fig.update_xaxes(title=f"Hamming distance to {anchor}")
    fig.update_yaxes(title="units")
    return _layout(fig, 330, title=f"Distance of the evicted candidates to {anchor}",
                   legend=dict(orientation="h", y=-0.25))


def anchor_color(index: int) -> str:
    """Colour of anchor `index`'s group: the categorical sequence without the representatives' orange."""
    palette = [c for c in SEQUENCE if c != STATUS_COLORS[REPRESENTATIVE]]
    return palette[index % len(palette)]


def _anchor_groups(fig: go.Figure, view: UnitView, ranked: np.ndarray, text: list[str]) -> None:
    """One trace per anchor's group of candidates (several anchors), coloured by anchor."""
    groups = view.groups[ranked]
    for g in range(view.n_anchors):
        rows = np.flatnonzero(groups == g)
        fig.add_trace(go.Scattergl(
            x=rows, y=view.distances[ranked][rows], mode="markers", name=f"anchor {g} ({len(rows)})",
            marker=dict(color=anchor_color(g), size=6), text=[text[i] for i in rows],
            hovertemplate="%{text}<extra></extra>",
        ))


def _binned_ranks(fig: go.Figure, ranks: np.ndarray, distances: np.ndarray, name: str, color: str,
                  max_points: int) -> None:
    """Candidates `ranks` (consecutive) binned to at most `max_points` markers: each at its bin's mean distance,
    with the bin's minimum and maximum as an error bar."""
    if not len(ranks):
        return
    edges = bin_edges(len(ranks), max_points)
    mean = bin_mean(distances, edges)
    low, high = bin_min_max(distances, edges)
    first, last = ranks[edges[:-1]], ranks[edges[1:] - 1]
    fig.add_trace(go.Scattergl(
        x=((first + last) / 2).astype(np.float32), y=mean.astype(np.float32), mode="markers", name=name,
        marker=dict(color=color, size=4),
        error_y=dict(type="data", symmetric=False, array=(high - mean).astype(np.float32),
                     arrayminus=(mean - low).astype(np.float32), thickness=1, width=0, color=color),
        customdata=np.stack([first, last, low, high], axis=1).astype(np.int32),
        hovertemplate="ranks %{customdata[0]}–%{customdata[1]}<br>distance %{customdata[2]}–%{customdata[3]} "
                      "(mean %{y:.1f})<extra></extra>"))


def bucket_figure(view: UnitView, max_points: int = MAX_POINTS) -> go.Figure:
    """Candidates in KVCrush's order (distance, position): buckets alternate colours, stars are representatives.

    With several anchors the order is group after group (nearest anchor, then distance to it, then
    position) and colours tell the anchors' groups apart. More than `max_points` candidates are binned along
    the order (`_binned_ranks`: a marker per bin, its distance range as an error bar) and at most `max_points`
    representatives are drawn (`thin`), so the figure stays bounded whatever the prompt length.
    """
    ranked = candidate_order(view)
    several = view.n_anchors > 1
    binned = len(ranked) > max_points
    reps = thin(np.flatnonzero(view.status[ranked] == REPRESENTATIVE), max_points)

    def describe(i: int) -> str:
        return (f"#{view.starts[i]} {view.labels[i]}<br>bucket {view.bucket[i]} · distance {view.distances[i]}"
                + (f" · anchor {view.groups[i]}" if several else ""))

    fig = go.Figure()
    if binned:
        groups = view.groups[ranked]
        for g in range(view.n_anchors):
            rows = np.flatnonzero(groups == g)
            name = f"anchor {g} ({len(rows)})" if several else f"evicted candidates ({len(rows):,}, binned)"
            _binned_ranks(fig, rows, view.distances[ranked][rows], name,
                          anchor_color(g) if several else "#7a7a7a", max_points)
    elif several:
        _anchor_groups(fig, view, ranked, [describe(i) for i in ranked])
    else:
        colors = [bucket_color(int(b)) if b >= 0 else "#cccccc" for b in view.bucket[ranked]]
        fig.add_trace(go.Scattergl(
            x=np.arange(len(ranked)), y=view.distances[ranked], mode="markers", name="evicted candidate",
            marker=dict(color=colors, size=6), text=[describe(i) for i in ranked],
            hovertemplate="%{text}<extra></extra>",
        ))
    fig.add_trace(go.Scattergl(
        x=reps, y=view.distances[ranked][reps], mode="markers", name="representative",
        marker=dict(symbol="star", size=13 if not binned else 9, color=STATUS_COLORS[REPRESENTATIVE],
                    line=dict(color="#000", width=1)),
        text=[describe(ranked[i]) for i in reps], hovertemplate="representative<br>%{text}<extra></extra>",
    ))
    order_text = "nearest anchor, distance, then position" if several else "distance, then position"
    fig.update_xaxes(title=f"candidate rank (sorted by {order_text})")
    fig.update_yaxes(title="distance to its anchor" if several else "distance to anchor")
    title = f"Buckets of {view.n_anchors} anchors' groups" if several else "Buckets along the distance order"
    if binned:
        title += f" · {len(ranked):,} candidates binned"
    return _layout(fig, 330, title=title, legend=dict(orientation="h", y=-0.25))


def sample_units(view: UnitView, limit: int = MAX_POINTS) -> np.ndarray:
    """At most `limit` unit rows for a map of the signatures: every representative (thinned only if they alone
    exceed `limit`), then the other units evenly spaced along the prompt. All rows when there are few enough."""
    if view.n_units <= limit:
        return np.arange(view.n_units)
    reps = thin(np.flatnonzero(view.status == REPRESENTATIVE), limit)
    others = np.flatnonzero(view.status != REPRESENTATIVE)
    return np.sort(np.concatenate([reps, thin(others, max(0, limit - len(reps)))]))


def take_units(view: UnitView, rows: np.ndarray) -> UnitView:
    """The view restricted to unit `rows` (the anchors and bit labels unchanged)."""
    return dataclasses.replace(
        view, starts=view.starts[rows], ends=view.ends[rows], bits=view.bits[rows], distances=view.distances[rows],
        status=view.status[rows], bucket=view.bucket[rows], candidate=view.candidate[rows],
        labels=[view.labels[i] for i in rows], group=None if view.group is None else view.group[rows])


def embedding_scatter(coords: np.ndarray, view: UnitView, color_by: str, method: str) -> go.Figure:
    """2-D map of the signatures; colour by status, bucket, distance or nearest anchor; representatives as stars."""
    several = view.n_anchors > 1
    text = np.array([f"#{s} {label}<br>distance {d} · bucket {b}" + (f" · anchor {g}" if several else "")
                     for s, label, d, b, g in zip(view.starts, view.labels, view.distances, view.bucket, view.groups,
                                                  strict=True)])
    fig = go.Figure()
    if color_by == "anchor":
        for g in range(view.n_anchors):
            mask = view.groups == g
            fig.add_trace(go.Scattergl(x=coords[mask, 0], y=coords[mask, 1], mode="markers",
                                       name=f"nearest anchor {g} ({int(mask.sum())})",
                                       marker=dict(color=anchor_color(g), size=6), text=text[mask],
                                       hovertemplate="%{text}<extra></extra>"))
    elif color_by == "bucket":
        outside = view.bucket < 0
        fig.add_trace(go.Scattergl(x=coords[outside, 0], y=coords[outside, 1], mode="markers", name="not a candidate",
                                   marker=dict(color="#d9d9d9", size=5), text=text[outside],
                                   hovertemplate="%{text}<extra></extra>"))
        inside = ~outside
        fig.add_trace(go.Scattergl(x=coords[inside, 0], y=coords[inside, 1], mode="markers",
                                   name="candidates by bucket",
                                   marker=dict(color=[bucket_color(int(b)) for b in view.bucket[inside]], size=6),
                                   text=text[inside], hovertemplate="%{text}<extra></extra>"))
    elif color_by == "distance":
        fig.add_trace(go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", name="units",
                                   marker=dict(color=view.distances, colorscale=CONTINUOUS_SCALE, size=6,
                                               colorbar=dict(title="distance", thickness=12)),
                                   text=text, hovertemplate="%{text}<extra></extra>"))
    else:
        for code in (IMPORTANT, EVICTED):
            mask = view.status == code
            fig.add_trace(go.Scattergl(x=coords[mask, 0], y=coords[mask, 1], mode="markers",
                                       name=f"{STATUS_LABELS[code]} ({int(mask.sum())})",
                                       marker=dict(color=STATUS_COLORS[code] if code != EVICTED else "#9a9a9a", size=6),
                                       text=text[mask], hovertemplate="%{text}<extra></extra>"))
    reps = view.status == REPRESENTATIVE
    fig.add_trace(go.Scattergl(x=coords[reps, 0], y=coords[reps, 1], mode="markers",
                               name=f"KVCrush representative ({int(reps.sum())})",
                               marker=dict(symbol="star", size=12, color=STATUS_COLORS[REPRESENTATIVE],
                                           line=dict(color="#000", width=1)),
                               text=text[reps], hovertemplate="representative<br>%{text}<extra></extra>"))
    fig.update_xaxes(showticklabels=False, title=f"{method} 1")
    fig.update_yaxes(showticklabels=False, title=f"{method} 2")
    return _layout(fig, 480, title=f"{method} map of the signatures", legend=dict(orientation="h", y=-0.12))


def policy_bars(labels: Sequence[str], values: Sequence[float], title: str, axis: str, fmt: str = "") -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), marker_color=[policy_color(n) for n in labels],
                           text=[format(v, fmt) if fmt else v for v in values], textposition="outside"))
    fig.update_yaxes(title=axis)
    return _layout(fig, 300, title=title, showlegend=False)


def timing_bars(labels: Sequence[str], stages: dict[str, Sequence[float]]) -> go.Figure:
    """One small bar chart per stage (prefill, select, decode), bars coloured by policy."""
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=[f"{s} (s)" for s in stages])
    for col, values in enumerate(stages.values(), start=1):
        fig.add_trace(go.Bar(x=list(labels), y=list(values), marker_color=[policy_color(n) for n in labels],
                             showlegend=False, hovertemplate="%{x}: %{y:.3f} s<extra></extra>"), row=1, col=col)
    _layout(fig, 320, title="Time per stage")
    fig.update_layout(margin=dict(l=10, r=10, t=80, b=10))
    return fig


def jaccard_lines(series: dict[str, Sequence[float]]) -> go.Figure:
    fig = go.Figure()
    for i, (name, values) in enumerate(series.items()):
        dash = ["solid", "dash", "dot"][i // len(SEQUENCE) % 3]
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers", name=name,
                                 line=dict(color=SEQUENCE[i % len(SEQUENCE)], dash=dash)))
    n_layers = max((len(v) for v in series.values()), default=1)
    fig.update_xaxes(title="layer", tickmode="linear", dtick=max(1, n_layers // 15))
    fig.update_yaxes(title="Jaccard of kept sets (mean over KV heads)", range=[0, 1.02])
    return _layout(fig, 340, title="Overlap of kept sets per layer", legend=dict(orientation="h", y=-0.25))


def sweep_lines(rows: list[dict], metrics: dict[str, str]) -> go.Figure:
    """Metric vs budget, one line per policy; `metrics` maps column -> axis title."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics.values()))
    policies = list(dict.fromkeys(r["policy"] for r in rows if r["policy"] != "full"))
    full = next((r for r in rows if r["policy"] == "full"), None)
    for col, metric in enumerate(metrics, start=1):
        for policy in policies:
            points = sorted((r["budget_fraction"], r[metric]) for r in rows if r["policy"] == policy
                            and r.get(metric) is not None)
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=policy, legendgroup=policy, showlegend=col == 1,
                                     line=dict(color=policy_color(policy))), row=1, col=col)
        if full is not None and full.get(metric) is not None:
            fig.add_hline(y=full[metric], line=dict(color=policy_color("full"), dash="dash"),
                          annotation_text="full cache", row=1, col=col)
        fig.update_xaxes(title="budget (share of prompt)", tickformat=".0%", range=[0, 1.03], row=1, col=col)
    _layout(fig, 380, title="Quality versus budget", legend=dict(orientation="h", y=-0.25))
    fig.update_layout(margin=dict(l=10, r=10, t=80, b=10))
    return fig


def memory_curve(tokens: Sequence[int], full: Sequence[float], compressed: Sequence[float], marker: int,
                 label: str) -> go.Figure:
    fig = go.Figure()
    gib = 1024**3
    fig.add_trace(go.Scatter(x=list(tokens), y=[v / gib for v in full], name="full cache", mode="lines",
                             line=dict(color=policy_color("full"))))
    fig.add_trace(go.Scatter(x=list(tokens), y=[v / gib for v in compressed], name=label, mode="lines",
                             line=dict(color=policy_color("kvcrush"))))
    fig.add_vline(x=marker, line=dict(color="#666", dash="dot"))
    fig.update_xaxes(type="log", title="context tokens")
    fig.update_yaxes(title="KV cache (GiB)")
    return _layout(fig, 320, title="KV cache size versus context", legend=dict(orientation="h", y=-0.25))


def benchmark_figure(frame, x: str, y: str, color: str | None) -> go.Figure:
    """Mean of `y` per `x` (and per `color` group), one line per group; where the file has the 95%
    interval of `y` (`y_low`/`y_high`, or `score_low`/`score_high` for `score`), as error bars."""
    low, high = (f"{y}_low", f"{y}_high")
    keys = [color, x] if color else [x]
    columns = [y] + ([low, high] if low in frame and high in frame else [])
    means = frame.groupby(keys, dropna=False)[columns].mean().reset_index()
    fig = go.Figure()
    groups = means.groupby(color, dropna=False) if color else [("all", means)]
    for name, part in groups:
        part = part.sort_values(x)
        label = str(name[0] if isinstance(name, tuple) else name)
        error = None
        if low in part and high in part:
            error = dict(type="data", symmetric=False, array=(part[high] - part[y]).tolist(),
                         arrayminus=(part[y] - part[low]).tolist(), thickness=1)
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines+markers", name=label, error_y=error,
                                 line=dict(color=policy_color(label)) if color == "policy" else None))
    fig.update_xaxes(title=x)
    fig.update_yaxes(title=f"mean {y}")
    return _layout(fig, 360, title=f"{y} versus {x}")


def decode_cache_curve(held: Sequence[int], without: Sequence[int], ceiling: int | None, step: int,
                       title: str) -> go.Figure:
    """Tokens one KV head holds after each generated token with decode-time eviction, against the tokens it
    would hold without (computed), the `T + k` ceiling (dotted) and the slider's step (a marker)."""
    steps = list(range(len(held)))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=list(without), name="without decode-time eviction (computed)",
                             mode="lines", line=dict(color=OKABE_ITO["grey"], dash="dash")))
    fig.add_trace(go.Scatter(x=steps, y=list(held), name="held with decode-time eviction", mode="lines",
                             line=dict(color=OKABE_ITO["vermillion"], shape="hv")))
    fig.add_trace(go.Scatter(x=[step], y=[held[step]], name=f"after token {step}", mode="markers",
                             marker=dict(color=OKABE_ITO["black"], size=9), showlegend=False,
                             hovertemplate="after token %{x}: %{y} tokens<extra></extra>"))
    if ceiling is not None:
        fig.add_hline(y=ceiling, line=dict(color=OKABE_ITO["blue"], dash="dot"),
                      annotation_text=f"T + k = {ceiling}", annotation_position="top left")
    fig.update_xaxes(title="generated tokens")
    fig.update_yaxes(title="cache tokens per head")
    return _layout(fig, 300, title=title, legend=dict(orientation="h", y=-0.3))
