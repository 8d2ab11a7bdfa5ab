"""What the answer used (Attention page): where each generated token's attention went in the compressed cache.

Renders a recorded `kvcrush.attention_use.AttentionUse`: the share per status overall, per layer (beside the
representatives' share of the cache, what even attention would give them), per generated token, and the
prompt tokens attended to most.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kvcrush.attention_use import CATEGORIES, REPRESENTATIVE_C, AttentionUse
from kvcrush.trace import EVICTED, RunTrace, to_jsonable
from ui import explain_plots, export
from ui import tokens as tok
from ui.colors import STATUS_COLORS, STATUS_LABELS

TOP = 20


def shares_frame(use: AttentionUse, by: str, labels: list[str]) -> pd.DataFrame:
    """One row per layer (`by="layer"`) or generated token (`by="token"`), one column per category."""
    values = use.per_layer() if by == "layer" else use.per_token()
    frame = pd.DataFrame(values.numpy(), columns=list(CATEGORIES))
    frame.insert(0, by, labels)
    return frame


def prompt_status(trace: RunTrace, positions: list[int]) -> list[tuple[int, int]]:
    """(most common status where kept, layer-heads keeping it) of each position: attention only reaches a
    token in the layers and heads that kept it."""
    heads = trace.layers[0].kept.shape[0]
    statuses = np.concatenate([tok.status_matrix(trace, h)[:, positions] for h in range(heads)])
    out = []
    for column in statuses.T:
        kept = column[column != EVICTED]
        out.append((int(np.bincount(kept).argmax()) if kept.size else EVICTED, int(kept.size)))
    return out


def render(use: AttentionUse, trace: RunTrace, generated: list[str]) -> None:
    """Summary metrics, the per-layer and per-token charts, the top prompt tokens and downloads."""
    overall, cache = use.overall().numpy(), use.cache_overall().numpy()
    rep_share, rep_cache = float(overall[REPRESENTATIVE_C]), float(cache[REPRESENTATIVE_C])
    verdict = ("more than" if rep_share > rep_cache * 1.1 else "less than" if rep_share < rep_cache * 0.9
               else "about as much as")
    with st.container(key="attention_summary"):
        st.markdown(f"Over {use.n_steps} generated tokens and {use.shares.shape[1]} layers, the answer gave "
                    f"**{rep_share:.1%}** of its attention to KVCrush representatives, which hold {rep_cache:.1%} of "
                    f"the cache rows: {verdict} an even spread would give them.")
        cols = st.columns(len(CATEGORIES))
        for col, name, share, rows in zip(cols, CATEGORIES, overall, cache, strict=True):
            col.metric(name, f"{share:.1%}", help=f"{rows:.1%} of the cache rows (mean over layers and tokens)")
    token_labels = [f"{int(i)}: {generated[int(i)]!r}" if int(i) < len(generated) else str(int(i))
                    for i in use.tokens.tolist()]
    st.plotly_chart(explain_plots.attention_by_layer(use), key="att_layers", config={"displayModeBar": False})
    st.plotly_chart(explain_plots.attention_by_token(use, token_labels), key="att_tokens",
                    config={"displayModeBar": False})
    top = use.top_prompt_tokens(TOP)
    positions = [p for p, _ in top]
    statuses = prompt_status(trace, positions)
    total = len(trace.layers) * trace.layers[0].kept.shape[0]
    labels = [f"#{p} {trace.token_strings[p]!r} ({STATUS_LABELS[s]}, {n}/{total})"
              for p, (s, n) in zip(positions, statuses, strict=True)]
    st.plotly_chart(explain_plots.top_tokens(positions, [v for _, v in top], labels,
                                             [STATUS_COLORS[s] for s, _ in statuses]),
                    key="att_top", config={"displayModeBar": False})
    st.caption(f"In brackets: why the token is in the cache where it is kept, and in how many of the {total} "
               "layer-heads it is kept (attention reaches it only there).")
    cols = st.columns(3)
    with cols[0]:
        export.csv_button(shares_frame(use, "layer", list(range(use.shares.shape[1]))), "attention-by-layer",
                          "att_layer_csv", "Per layer (CSV)")
    with cols[1]:
        export.csv_button(shares_frame(use, "token", token_labels), "attention-by-token", "att_token_csv",
                          "Per generated token (CSV)")
    with cols[2]:
        export.json_button(lambda: json.dumps(to_jsonable(use)), "attention-use", "att_json", "Everything (JSON)")
