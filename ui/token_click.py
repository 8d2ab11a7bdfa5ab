"""Clicks on the token view: which token was clicked, sent back to Python.

The token view is plain HTML (`ui.tokens.tokens_html`, one `<span data-pos=...>` per token), which
cannot talk to Python. A script-only `st.components.v2` component listens for clicks on those spans in
the page and reports the clicked position as a one-shot trigger value (Streamlit's own pattern for
clickable HTML, "Example 1" of `st.components.v2.component`). Nothing in the page's text reaches the script:
it only reads the integer `data-pos` the app itself rendered.
"""

from __future__ import annotations

import streamlit as st

_JS = """
export default function(component) {
    const { setTriggerValue } = component;
    const onClick = (event) => {
        const span = event.target && event.target.closest ? event.target.closest('.kv-tokens [data-pos]') : null;
        if (!span) return;
        const position = parseInt(span.getAttribute('data-pos'), 10);
        if (Number.isInteger(position)) setTriggerValue('token', position);
    };
    document.addEventListener('click', onClick);
    return () => document.removeEventListener('click', onClick);
}
"""

_component = st.components.v2.component("kvcrush_token_click", js=_JS)


def clicked(key: str) -> int | None:
    """Mount the listener; the position of the token clicked since the last rerun, else None."""
    result = _component(key=key, on_token_change=lambda: None)
    token = getattr(result, "token", None) if result is not None else None
    return int(token) if isinstance(token, (int, float)) else None
