"""Figures of the explanation views: a span's fate per layer and head, the walk's steps, what the answer used.

Builders take the library's results (`kvcrush.explain`, `kvcrush.attention_use`) and lay them out; the
walk's distance, bucket and signature steps reuse the Groups and Signatures pages' figures (`ui.plots`).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvcrush.attention_use import CATEGORIES, AttentionUse
from kvcrush.explain import FATE_NAMES, WalkStep
from kvcrush.trace import IMPORTANT, PROTECTED, RECENT, REPRESENTATIVE, SINK
from ui.colors import OKABE_ITO, STATUS_COLORS
from ui.plots import MAX_POINTS, _layout, bin_edges, thin

# The walk's figures stay bounded in marks whatever the prompt length (issue 23): at most `MAX_POINTS` points per
# trace (`ui.plots`' binning helpers). Score lines become min-max envelopes, the ranked scores are thinned except
# `NEAR_CUTOFF` ranks each side of the head's cut-off (drawn exactly), and the candidates are counted per bin.
NEAR_CUTOFF = 200

# Fate colours: kept green, partly kept yellow, only a stand-in orange (the representatives' colour), lost grey.
FATE_COLORS = (STATUS_COLORS[IMPORTANT], OKABE_ITO["yellow"], STATUS_COLORS[REPRESENTATIVE], "#9a9a9a")
# `kvcrush.attention_use.CATEGORIES` in order; the answer's own tokens in blue, apart from the recent window.
CATEGORY_COLORS = (STATUS_COLORS[SINK], STATUS_COLORS[RECENT], STATUS_COLORS[IMPORTANT], STATUS_COLORS[REPRESENTATIVE],
                   STATUS_COLORS[PROTECTED], OKABE_ITO["blue"])


def fate_grid(codes: np.ndarray, selected: tuple[int, int], title: str) -> go.Figure:
    """Layer x KV-head squares coloured by the span's fate (one selectable trace; legend entries apart)."""
    n_layers, n_heads = codes.shape
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    height = int(min(900, max(220, 110 + 22 * n_layers)))
    size = max(8, min(30, int((height - 110) / max(n_layers, 1) * 0.85)))
    names = np.array(FATE_NAMES, dtype=object)[codes.ravel()]
    fig = go.Figure(go.Scatter(
        x=heads.ravel(), y=layers.ravel(), mode="markers", name="fate", showlegend=False, text=names,
        marker=dict(symbol="square", size=size, color=[FATE_COLORS[c] for c in codes.ravel()]),
        hovertemplate="layer %{y} · head %{x}<br>%{text}<extra></extra>",
    ))
    for code, name in enumerate(FATE_NAMES):
        count = int((codes == code).sum())
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{name} ({count})", hoverinfo="skip",
                                 marker=dict(symbol="square", size=12, color=FATE_COLORS[code])))
    layer, head = selected
    fig.add_trace(go.Scatter(x=[head], y=[layer], mode="markers", hoverinfo="skip", showlegend=False,
                             name="selected", marker=dict(symbol="square-open", size=size + 6,
                                                          color=OKABE_ITO["black"], line=dict(width=3))))
    fig.update_xaxes(title="KV head", tickmode="array", tickvals=list(range(n_heads)), range=[-0.6, n_heads - 0.4])
    fig.update_yaxes(title="layer", range=[n_layers - 0.5, -0.5], dtick=1 if n_layers <= 32 else 4)
    return _layout(fig, height + 60, title=title, legend=dict(orientation="h", y=-0.08, font=dict(size=11)))


# --- the walk --------------------------------------------------------------------------------------------
def envelope(y: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of a line's points to draw, in order: all of them up to `max_points`, else each bin's minimum and
    maximum (at most `max_points // 2` bins, `ui.plots.bin_edges`), so every peak and dip stays on the line."""
    y = np.asarray(y)
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    edges = bin_edges(n, max(1, max_points // 2))
    width = int(edges[1] - edges[0])
    bins = len(edges) - 1
    padded = np.concatenate([y, np.full(bins * width - n, y[-1])]).reshape(bins, width)  # the last bin repeats
    starts = edges[:-1]
    low = np.minimum(starts + np.argmin(padded, axis=1), n - 1)
    high = np.minimum(starts + np.argmax(padded, axis=1), n - 1)
    pairs = np.stack([np.minimum(low, high), np.maximum(low, high)], axis=1).ravel()
    return pairs[np.r_[True, pairs[1:] != pairs[:-1]]]  # a flat bin gives one point


def near(indices: np.ndarray, at: int, n: int, reach: int = NEAR_CUTOFF) -> np.ndarray:
    """`indices` with every index within `reach` of `at` added (sorted, unique, inside `[0, n)`)."""
    around = np.arange(max(0, at - reach), min(n, at + reach))
    return np.union1d(np.asarray(indices, dtype=np.int64), around)


def _scores(step: WalkStep, head: int, max_points: int = MAX_POINTS) -> go.Figure:
    positions = step.data["positions"].numpy()
    scores = step.data["scores"].numpy()
    fig = go.Figure()
    for h in range(scores.shape[0]):
        mine = h == head
        drawn = envelope(scores[h], max_points)
        fig.add_trace(go.Scattergl(x=positions[drawn], y=scores[h][drawn], mode="lines", name=f"KV head {h}",
                                   line=dict(width=2 if mine else 1, color=OKABE_ITO["blue"] if mine else "#bbbbbb")))
    fig.update_xaxes(title="token position (first token of each unit)")
    fig.update_yaxes(title="base score")
    title = f"Base scores of the middle, KV head {head} in blue"
    if len(positions) > max_points:
        title += f" · {len(positions):,} units as min-max envelopes"
    return _layout(fig, 320, title=title)


def _cutoff(step: WalkStep, max_points: int = MAX_POINTS) -> go.Figure:
    ranked = step.data["sorted"].numpy()
    cut = int(step.data["cutoff"])
    n = len(ranked)
    drawn = np.arange(n) if n <= max_points else near(thin(np.arange(n), max(2, max_points - 2 * NEAR_CUTOFF)),
                                                         cut, n)
    kept, below = drawn[drawn < cut], drawn[drawn >= cut]
    fig = go.Figure([
        go.Scattergl(x=kept + 1, y=ranked[kept], mode="markers", name=f"kept by importance ({cut})",
                     marker=dict(color=STATUS_COLORS[IMPORTANT], size=4)),
        go.Scattergl(x=below + 1, y=ranked[below], mode="markers", name=f"below the cut-off ({n - cut})",
                     marker=dict(color="#9a9a9a", size=4)),
    ])
    fig.add_vline(x=cut + 0.5, line=dict(color=OKABE_ITO["vermillion"], width=2, dash="dash"))
    fig.update_xaxes(title="rank (1 = best)")
    fig.update_yaxes(title="base score")
    title = "The head's scores, best first, and the cut-off"
    if len(drawn) < n:
        title += f" · {len(drawn):,} of {n:,} ranks drawn, every one near the cut-off"
    return _layout(fig, 320, title=title, legend=dict(orientation="h", y=-0.25))


def _binned_levels(positions: np.ndarray, levels: np.ndarray, mask: np.ndarray, edges: np.ndarray):
    """(x, y, counts, first, last) of one marker per bin and level where `mask` holds units of that level."""
    xs, ys, counts, firsts, lasts = [], [], [], [], []
    first, last = positions[edges[:-1]], positions[edges[1:] - 1]
    for level in np.unique(levels[mask]):
        count = np.add.reduceat((mask & (levels == level)).astype(np.int64), edges[:-1])
        present = np.flatnonzero(count)
        xs.append((first[present] + last[present]) / 2)
        ys.append(np.full(len(present), level))
        counts.append(count[present])
        firsts.append(first[present])
        lasts.append(last[present])
    if not xs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    return tuple(np.concatenate(part) for part in (xs, ys, counts, firsts, lasts))


def _candidates(step: WalkStep, max_points: int = MAX_POINTS) -> go.Figure:
    positions = step.data["positions"].numpy()
    keeping = step.data["heads_keeping"].numpy()
    candidate = step.data["candidate"].numpy().astype(bool)
    n = len(positions)
    groups = [("kept by some head", ~candidate, STATUS_COLORS[IMPORTANT]),
              ("candidate (no head)", candidate, STATUS_COLORS[REPRESENTATIVE])]
    fig = go.Figure()
    if n <= max_points:
        for name, mask, color in groups:
            fig.add_trace(go.Scattergl(x=positions[mask], y=keeping[mask], mode="markers", name=name,
                                       marker=dict(color=color, size=5)))
        title = "How many KV heads keep each middle unit"
    else:  # one marker per bin of positions and number of heads, at most max_points per trace
        n_levels = int(keeping.max()) + 1 if n else 1
        edges = bin_edges(n, max(1, max_points // n_levels))
        for name, mask, color in groups:
            x, y, count, first, last = _binned_levels(positions, keeping, mask, edges)
            fig.add_trace(go.Scattergl(
                x=x.astype(np.float32), y=y.astype(np.int32), mode="markers", name=name,
                marker=dict(color=color, size=5), customdata=np.stack([count, first, last], axis=1).astype(np.int32),
                hovertemplate="#%{customdata[1]}–#%{customdata[2]}: %{customdata[0]} unit(s) kept by %{y} "
                              "head(s)<extra></extra>"))
        title = f"How many KV heads keep each middle unit · {n:,} units binned by {int(edges[1] - edges[0])}"
    fig.update_xaxes(title="token position")
    fig.update_yaxes(title="KV heads keeping it", dtick=1)
    return _layout(fig, 300, title=title, legend=dict(orientation="h", y=-0.3))


def _anchor(step: WalkStep) -> go.Figure:
    anchors = step.data["anchors"].numpy()
    fig = go.Figure(go.Heatmap(z=anchors, colorscale=[[0, "#F7F7F7"], [0.5, "#F7F7F7"], [0.5, OKABE_ITO["blue"]],
                                                      [1, OKABE_ITO["blue"]]], zmin=0, zmax=1, showscale=False,
                               xgap=1, ygap=2, hovertemplate="anchor %{y} · bit %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(title="anchor", autorange="reversed", dtick=1)
    fig.update_xaxes(title="bit")
    return _layout(fig, int(120 + 30 * len(anchors)), title="Anchor bits (blue = 1)")


def _representatives(step: WalkStep, max_points: int = MAX_POINTS) -> go.Figure:
    positions = step.data["positions"].numpy()
    sizes = step.data["sizes"].numpy()
    distances = step.data["distances"].numpy()
    drawn = thin(np.arange(len(positions)), max_points)
    fig = go.Figure(go.Scattergl(
        x=positions[drawn], y=distances[drawn], mode="markers", name="representative",
        marker=dict(symbol="star", color=STATUS_COLORS[REPRESENTATIVE], line=dict(color="#000", width=1),
                    size=np.clip(6 + np.sqrt(sizes[drawn]) * 2, 6, 30)),
        customdata=np.stack([drawn, sizes[drawn]], axis=1).astype(np.int32),
        hovertemplate="#%{x} · distance %{y}<br>bucket %{customdata[0]}: %{customdata[1]} members<extra></extra>"))
    fig.update_xaxes(title="token position of the representative")
    fig.update_yaxes(title="distance to its anchor")
    title = "Representatives (size: members they stand in for)"
    if len(drawn) < len(positions):
        title += f" · {len(drawn):,} of {len(positions):,} drawn"
    return _layout(fig, 300, title=title)


def walk_figure(step: WalkStep, head: int) -> go.Figure | None:
    """The figure of the steps that have their own (distances, buckets, signatures and the kept set reuse
    `ui.plots`); None for the others."""
    builders = {"scores": lambda: _scores(step, head), "cutoff": lambda: _cutoff(step),
                "candidates": lambda: _candidates(step), "anchor": lambda: _anchor(step),
                "representatives": lambda: _representatives(step)}
    build = builders.get(step.key)
    return build() if build is not None else None


# --- what the answer used ---------------------------------------------------------------------------------
def _stacked(x, shares: np.ndarray, axis_title: str, title: str, cache: np.ndarray | None = None) -> go.Figure:
    fig = go.Figure()
    for c, name in enumerate(CATEGORIES):
        fig.add_trace(go.Bar(x=x, y=shares[:, c], name=name, marker_color=CATEGORY_COLORS[c],
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}}<extra></extra>"))
    if cache is not None:
        fig.add_trace(go.Scatter(x=x, y=cache, mode="lines+markers", name="representatives' share of the cache",
                                 line=dict(color=OKABE_ITO["black"], dash="dot", width=1), marker=dict(size=4)))
    fig.update_layout(barmode="stack", bargap=0.1)
    fig.update_yaxes(title="share of attention", tickformat=".0%", range=[0, 1])
    fig.update_xaxes(title=axis_title)
    return _layout(fig, 360, title=title, legend=dict(orientation="h", y=-0.25))


def attention_by_layer(use: AttentionUse) -> go.Figure:
    shares = use.per_layer().numpy()
    cache = use.cache_shares.mean(dim=0)[:, CATEGORIES.index("KVCrush representative")].numpy()
    return _stacked(np.arange(len(shares)), shares, "layer",
                    "Where each layer's attention went (mean over the answer's tokens and heads)", cache)


def attention_by_token(use: AttentionUse, labels: list[str]) -> go.Figure:
    shares = use.per_token().numpy()
    return _stacked(labels, shares, "generated token", "Where each generated token's attention went (mean over layers)")


def top_tokens(positions: list[int], values: list[float], labels: list[str], colors: list[str]) -> go.Figure:
    fig = go.Figure(go.Bar(x=values[::-1], y=labels[::-1], orientation="h", marker_color=colors[::-1],
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_xaxes(title="mean attention (tokens, layers, heads)", tickformat=".1%")
    return _layout(fig, int(120 + 22 * len(values)), title="Prompt tokens the answer attended to most")
