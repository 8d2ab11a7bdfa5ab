"""Layer and KV-head pickers that remember the last choice across pages."""

from __future__ import annotations

import streamlit as st

SHARED_LAYER = "_shared_layer"
SHARED_HEAD = "_shared_head"


def _prepare(key: str, shared: str, count: int) -> None:
    value = st.session_state.get(key, st.session_state.get(shared, 0))
    if not isinstance(value, int) or not 0 <= value < count:
        value = 0
    st.session_state[key] = value


def layer(page: str, n_layers: int, container=None) -> int:
    key = f"{page}_layer"
    _prepare(key, SHARED_LAYER, n_layers)
    chosen = (container or st).selectbox("Layer", list(range(n_layers)), key=key)
    st.session_state[SHARED_LAYER] = chosen
    return int(chosen)


def head(page: str, kv_heads: int, container=None) -> int:
    key = f"{page}_head"
    _prepare(key, SHARED_HEAD, kv_heads)
    chosen = (container or st).selectbox("KV head", list(range(kv_heads)), key=key)
    st.session_state[SHARED_HEAD] = chosen
    return int(chosen)


def clicked_square(key: str) -> tuple[int, int] | None:
    """(layer, KV head) of the first point clicked (or box-selected) on a layer x KV-head grid chart, if any."""
    event = st.session_state.get(key)
    try:
        points = [p for p in event["selection"]["points"] if p.get("curve_number", 0) == 0]
    except (TypeError, KeyError):
        return None
    return (int(points[0]["y"]), int(points[0]["x"])) if points else None


def select(page: str, layer_value: int | None = None, head_value: int | None = None) -> None:
    """Set the pickers before they render (e.g. from a click on the layer x head grid)."""
    if layer_value is not None:
        st.session_state[f"{page}_layer"] = int(layer_value)
    if head_value is not None:
        st.session_state[f"{page}_head"] = int(head_value)
