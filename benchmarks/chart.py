"""chart.html: per task and dataset, score versus budget and the quality-versus-bytes Pareto view (Plotly).

Plotly (https://plotly.com/python/, MIT) is imported on use, so modules that only aggregate or write
markdown do not need it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.pareto import front_rows, storage_text

# Marker of a storage in the Pareto panel: the shape says the kept rows' bits, an open marker a budget in bytes.
BITS_SYMBOL = {16: "circle", 8: "diamond", 4: "square", 2: "triangle-up"}


def _storage_marker(row: pd.Series) -> str:
    symbol = BITS_SYMBOL.get(int(row.get("kv_bits", 16)), "circle")
    return symbol + "-open" if str(row.get("equal_bytes")) == "True" else symbol


def chart_html(results: pd.DataFrame, path: Path, title: str, embed_js: bool = True) -> None:
    """Per task/dataset, two panels: score versus budget per policy (95% intervals as error bars, the full
    cache dashed) and the Pareto view, score versus the share of the full cache's bytes actually kept
    (every policy, budget and storage: the marker's shape is the kept rows' bits, open for a budget in
    bytes; the front, `benchmarks.pareto.front_rows`, as a line through ringed points). `embed_js` puts
    plotly.js in the file so it works offline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(results[["task", "dataset"]].drop_duplicates().itertuples(index=False))
    if not panels:
        path.write_text("<html><body>No results.</body></html>")
        return
    titles = []
    for task, dataset in panels:
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        better = "higher" if sub["higher_is_better"].iloc[0] else "lower"
        name = f"{task} / {dataset}: {sub['score_name'].iloc[0]} ({better} is better)"
        titles += [f"{name} vs budget", f"{name} vs KV bytes kept (Pareto)"]
    fig = make_subplots(rows=len(panels), cols=2, subplot_titles=titles)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    policies = [p for p in dict.fromkeys(results["policy"]) if p != "full"]
    colors = {p: palette[i % len(palette)] for i, p in enumerate(policies)}
    fronts = front_rows(results)
    for index, (task, dataset) in enumerate(panels):
        row = index + 1
        sub = results[(results["task"] == task) & (results["dataset"] == dataset)]
        budgets = sorted(sub["budget"].unique())
        full = sub[sub["policy"] == "full"]
        if not full.empty:
            fig.add_trace(go.Scatter(
                x=[100 * min(budgets), 100], y=[float(full["score"].iloc[0])] * 2, mode="lines",
                line=dict(color="black", dash="dot"), name="full", legendgroup="full", showlegend=index == 0,
            ), row=row, col=1)
        for policy in policies:
            pol = sub[sub["policy"] == policy].sort_values("budget")
            if pol.empty:
                continue
            engine = pol["engine"].iloc[0]
            style = dict(color=colors[policy], dash="dash" if engine == "kvpress" else "solid",
                         width=3 if policy.startswith("kvcrush") else 1.5)
            low = pol["score_low"] if "score_low" in pol else pol["score"]
            high = pol["score_high"] if "score_high" in pol else pol["score"]
            fig.add_trace(go.Scatter(
                x=(100 * pol["budget"]).tolist(), y=pol["score"].tolist(), mode="lines+markers", name=policy,
                legendgroup=policy, showlegend=index == 0, line=style,
                error_y=dict(type="data", symmetric=False, array=(high - pol["score"]).tolist(),
                             arrayminus=(pol["score"] - low).tolist(), thickness=1),
                customdata=pol[["kv_fraction", "n"]].to_numpy(),
                hovertemplate=f"{policy}<br>budget %{{x:.0f}}%<br>score %{{y:.3f}}<br>kv kept %{{customdata[0]:.3f}}"
                              "<br>n %{customdata[1]}<extra></extra>",
            ), row=row, col=1)
            fig.add_trace(go.Scatter(
                x=(100 * pol["kv_fraction"]).tolist(), y=pol["score"].tolist(), mode="markers", name=policy,
                legendgroup=policy, showlegend=False,
                marker=dict(color=colors[policy], size=8, symbol=[_storage_marker(r) for _, r in pol.iterrows()]),
                customdata=(100 * pol["budget"]).to_numpy(),
                hovertemplate=f"{policy}<br>budget %{{customdata:.0f}}%<br>kv kept %{{x:.1f}}% of the full cache's"
                              " bytes<br>score %{y:.3f}<extra></extra>",
            ), row=row, col=2)
        if not full.empty:
            fig.add_trace(go.Scatter(x=[100 * float(full["kv_fraction"].iloc[0])], y=[float(full["score"].iloc[0])],
                                     mode="markers", marker=dict(color="black", symbol="star", size=10), name="full",
                                     legendgroup="full", showlegend=False), row=row, col=2)
        front = [f for f in fronts if f["task"] == task and f["dataset"] == dataset]
        if front:
            fig.add_trace(go.Scatter(
                x=[100 * f["kv_fraction"] for f in front], y=[f["score"] for f in front], mode="lines+markers",
                line=dict(color="black", width=1), marker=dict(symbol="circle-open", size=15, color="black"),
                name="Pareto front", legendgroup="pareto", showlegend=index == 0,
                text=[f"{f['policy']} at {f['budget']:.0%}, {storage_text(f)}" for f in front],
                hovertemplate="front: %{text}<br>kv kept %{x:.1f}%<br>score %{y:.3f}<extra></extra>",
            ), row=row, col=2)
        fig.update_xaxes(title_text="budget (% of context KV kept: tokens, or bytes for ~Nb)", row=row, col=1)
        fig.update_xaxes(title_text="KV kept (% of the full cache's bytes, measured)", row=row, col=2)
    fig.update_layout(title=title, height=420 * len(panels), template="plotly_white")
    fig.write_html(path, include_plotlyjs=True if embed_js else "cdn", full_html=True)
