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
from ui.plots import _layout

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
def _scores(step: WalkStep, head: int) -> go.Figure:
    positions = step.data["positions"].numpy()
    scores = step.data["scores"].numpy()
    fig = go.Figure()
    for h in range(scores.shape[0]):
        mine = h == head
        fig.add_trace(go.Scattergl(x=positions, y=scores[h], mode="lines", name=f"KV head {h}",
                                   line=dict(width=2 if mine else 1, color=OKABE_ITO["blue"] if mine else "#bbbbbb")))
    fig.update_xaxes(title="token position (first token of each unit)")
    fig.update_yaxes(title="base score")
    return _layout(fig, 320, title=f"Base scores of the middle, KV head {head} in blue")


def _cutoff(step: WalkStep) -> go.Figure:
    ranked = step.data["sorted"].numpy()
    cut = int(step.data["cutoff"])
    ranks = np.arange(1, len(ranked) + 1)
    fig = go.Figure([
        go.Scattergl(x=ranks[:cut], y=ranked[:cut], mode="markers", name=f"kept by importance ({cut})",
                     marker=dict(color=STATUS_COLORS[IMPORTANT], size=4)),
        go.Scattergl(x=ranks[cut:], y=ranked[cut:], mode="markers", name=f"below the cut-off ({len(ranked) - cut})",
                     marker=dict(color="#9a9a9a", size=4)),
    ])
    fig.add_vline(x=cut + 0.5, line=dict(color=OKABE_ITO["vermillion"], width=2, dash="dash"))
    fig.update_xaxes(title="rank (1 = best)")
    fig.update_yaxes(title="base score")
    return _layout(fig, 320, title="The head's scores, best first, and the cut-off",
                   legend=dict(orientation="h", y=-0.25))


def _candidates(step: WalkStep) -> go.Figure:
    positions = step.data["positions"].numpy()
    keeping = step.data["heads_keeping"].numpy()
    candidate = step.data["candidate"].numpy().astype(bool)
    fig = go.Figure([
        go.Scattergl(x=positions[~candidate], y=keeping[~candidate], mode="markers", name="kept by some head",
                     marker=dict(color=STATUS_COLORS[IMPORTANT], size=5)),
        go.Scattergl(x=positions[candidate], y=keeping[candidate], mode="markers", name="candidate (no head)",
                     marker=dict(color=STATUS_COLORS[REPRESENTATIVE], size=5)),
    ])
    fig.update_xaxes(title="token position")
    fig.update_yaxes(title="KV heads keeping it", dtick=1)
    return _layout(fig, 300, title="How many KV heads keep each middle unit", legend=dict(orientation="h", y=-0.3))


def _anchor(step: WalkStep) -> go.Figure:
    anchors = step.data["anchors"].numpy()
    fig = go.Figure(go.Heatmap(z=anchors, colorscale=[[0, "#F7F7F7"], [0.5, "#F7F7F7"], [0.5, OKABE_ITO["blue"]],
                                                      [1, OKABE_ITO["blue"]]], zmin=0, zmax=1, showscale=False,
                               xgap=1, ygap=2, hovertemplate="anchor %{y} · bit %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(title="anchor", autorange="reversed", dtick=1)
    fig.update_xaxes(title="bit")
    return _layout(fig, int(120 + 30 * len(anchors)), title="Anchor bits (blue = 1)")


def _representatives(step: WalkStep) -> go.Figure:
    positions = step.data["positions"].numpy()
    sizes = step.data["sizes"].numpy()
    distances = step.data["distances"].numpy()
    fig = go.Figure(go.Scattergl(
        x=positions, y=distances, mode="markers", name="representative",
        marker=dict(symbol="star", color=STATUS_COLORS[REPRESENTATIVE], line=dict(color="#000", width=1),
                    size=np.clip(6 + np.sqrt(sizes) * 2, 6, 30)),
        text=[f"bucket {i}: {n} members" for i, n in enumerate(sizes)],
        hovertemplate="#%{x} · distance %{y}<br>%{text}<extra></extra>"))
    fig.update_xaxes(title="token position of the representative")
    fig.update_yaxes(title="distance to its anchor")
    return _layout(fig, 300, title="Representatives (size: members they stand in for)")


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
