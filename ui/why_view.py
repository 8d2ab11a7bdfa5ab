"""Why this token? (Tokens page): one sentence per layer and KV head, and a compact table.

The decisions are `kvcrush.explain.why_token` of the run's trace; the token comes from a click in the
token view (`ui.token_click`) or the position box.
"""

from __future__ import annotations

import html
import json

import pandas as pd
import streamlit as st

from kvcrush.explain import TokenWhy
from kvcrush.trace import STATUS_NAMES, to_jsonable
from ui import export
from ui.colors import STATUS_COLORS, STATUS_TEXT_COLORS

POSITION_KEY = "why_pos"
SPAN_SEEN = "_why_span_start"  # the followed span's start the box last followed
COLUMNS = {"layer": "layer", "head": "head", "status": "status", "score": "score", "rank": "rank",
           "n_ranked": "of", "cutoff": "cut-off", "signature": "signature", "distance": "distance",
           "bucket": "bucket", "representative": "stand-in #"}


def position_input(n_tokens: int, clicked: int | None, span_start: int | None) -> int:
    """The token to explain: a clicked token, else the first token of a newly followed span, else the box's value."""
    seen = st.session_state.get(SPAN_SEEN)
    if clicked is not None and 0 <= clicked < n_tokens:
        st.session_state[POSITION_KEY] = clicked
    elif span_start is not None and span_start != seen:
        st.session_state[POSITION_KEY] = span_start
    st.session_state[SPAN_SEEN] = span_start
    value = st.session_state.get(POSITION_KEY)
    if not isinstance(value, int) or not 0 <= value < n_tokens:
        st.session_state[POSITION_KEY] = 0
    return int(st.number_input("Token position (or click a token above)", 0, n_tokens - 1, key=POSITION_KEY))


def table(why: TokenWhy) -> pd.DataFrame:
    """The compact table: one row per layer and KV head."""
    rows = why.rows()
    frame = pd.DataFrame(rows)[list(COLUMNS)].rename(columns=COLUMNS)
    frame["stand-in #"] = frame["stand-in #"].astype("Int64")
    return frame


def _sentence_html(why: TokenWhy, layer: int, head: int) -> str:
    items = []
    for decision in why.decisions:
        color = STATUS_COLORS[decision.status]
        text_color = STATUS_TEXT_COLORS.get(decision.status, "#111111")
        mark = " kv-why-current" if (decision.layer, decision.head) == (layer, head) else ""
        items.append(f'<li class="kv-why-item{mark}"><span style="background:{color};color:{text_color};'
                     f'border-radius:3px;padding:0 5px;">{html.escape(STATUS_NAMES[decision.status])}</span> '
                     f"{html.escape(decision.sentence)}</li>")
    style = (".kv-why ul{margin:0;padding-left:1.1rem;} .kv-why li{margin:1px 0;}"
             " .kv-why .kv-why-current{font-weight:600;outline:2px solid #D55E00;border-radius:3px;}")
    return (f'<style>{style}</style><div class="kv-why" style="font-size:0.84rem;max-height:300px;overflow-y:auto;'
            f'border:1px solid #d0d0d0;border-radius:6px;padding:6px 10px;"><ul>{"".join(items)}</ul></div>')


def render(why: TokenWhy, layer: int, head: int) -> None:
    """The summary, the current layer and head's decision, every sentence, the table and downloads."""
    current = why.decision(layer, head)
    st.markdown(f"{html.escape(why.summary())}  \n**Layer {layer}, KV head {head}:** "
                f"{html.escape(current.sentence.split(': ', 1)[1])}")
    st.html(_sentence_html(why, layer, head))
    with st.expander("Compact table and downloads", expanded=False):
        frame = table(why)
        st.dataframe(frame, hide_index=True, key="why_table")
        cols = st.columns(2)
        with cols[0]:
            export.csv_button(pd.DataFrame(why.rows()), f"why-token-{why.position}", "why_csv")
        with cols[1]:
            export.json_button(lambda: json.dumps(to_jsonable(why)), f"why-token-{why.position}", "why_json")
