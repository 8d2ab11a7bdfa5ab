"""Tokens: the prompt coloured by what one layer's KV head kept, a layer x head grid, a whole-prompt strip;
follow a span through every layer and head, and why one token was kept or evicted.

Everything below the answer box renders from the selection. The answer starts decoding once the
counts are out (`runs.begin_answer`) and streams into its box while the token view and charts draw.
The span and the token come from `kvcrush.explain` (`ui.span_view`, `ui.why_view`); the first time a
prompt with a gold answer is shown, the span is that answer and the token window moves to it.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from kvcrush import explain
from kvcrush.explain import decode_cache
from kvcrush.metrics import head_agreement
from kvcrush.sizes import format_bytes
from kvcrush.trace import EVICTED
from ui import export, page, pick, plots, policy_options, runs, span_view, token_click, why_view
from ui import tokens as tok
from ui.fmt import seconds

WINDOWS = (200, 400, 600)
GRID_KEY = "tok_grid"
STEP_KEY = "tok_step"
FOLLOWED_KEY = "_tok_followed"  # the followed span the token window last moved to
ZOOM_KEY = "tok_strip_zoom"
COLOR_BY = {"agreement with the other heads": "agreement", "share of tokens kept": "kept"}


def _apply_grid_click() -> None:
    """A click (or box selection) on the head grid or the span's fate map picks that layer and head before the
    pickers render (each chart's last click is applied once)."""
    for key in (GRID_KEY, span_view.FATE_KEY):
        square = pick.clicked_square(key)
        if square is not None and square != st.session_state.get(f"_{key}_applied"):
            st.session_state[f"_{key}_applied"] = square
            pick.select("tok", layer_value=square[0], head_value=square[1])


def _compared_policy(policy):
    """What the span map is compared with: KVCrush's base policy, or KVCrush over this policy (None if neither)."""
    config = policy.normalized()
    if config.base:
        return config.with_name(config.base)
    if config.name in policy_options.base_choices():
        return dataclasses.replace(config, name="kvcrush", base=config.name).normalized()
    return None


def _window_size() -> int:
    size = st.session_state.get("tok_window", WINDOWS[1])
    return size if size in WINDOWS else WINDOWS[1]


def _show_position(position: int, n_tokens: int) -> None:
    """Move the token window so `position` sits a quarter of the way down it (before the slider renders)."""
    st.session_state["tok_start"] = max(0, min(position - _window_size() // 4, n_tokens - 1))


def _follow(followed, pointed: bool, n_tokens: int) -> None:
    """The token window follows the followed span: on the prompt's first visit (its gold answer), whenever
    the span changes (another source, occurrence, find hit or range), on any prompt, uploads included, and when
    the window's own position was dropped (Streamlit forgets a widget's value while another page is shown)."""
    where = None if followed is None else (followed.start, followed.end)
    lost = "tok_start" not in st.session_state
    if where is not None and (pointed or lost or where != st.session_state.get(FOLLOWED_KEY)):
        _show_position(followed.start, n_tokens)
    st.session_state[FOLLOWED_KEY] = where


def _window(token_strings: list[str], n_tokens: int) -> tuple[int, int]:
    """The page of tokens drawn (`[start, end)`, at most the chosen window): text is drawn for it only, so the
    view costs the same whatever the prompt length. "Find text" moves it to the first match."""
    cols = st.columns([1, 1.4, 3])
    size = cols[0].selectbox("Tokens per window", WINDOWS, index=1, key="tok_window")
    needle = cols[1].text_input("Find text", key="tok_find", placeholder="e.g. magic number")
    if needle and needle != st.session_state.get("_tok_found"):
        st.session_state["_tok_found"] = needle
        position = tok.find_token(token_strings, needle)
        if position is None:
            st.toast(f"{needle!r} is not in the prompt.")
        else:
            _show_position(position, n_tokens)
    if n_tokens <= size:
        return 0, n_tokens
    if st.session_state.get("tok_start", 0) >= n_tokens:
        st.session_state["tok_start"] = 0
    start = cols[2].slider("Window start (token position)", 0, n_tokens - 1, step=10, key="tok_start")
    return start, min(n_tokens, start + size)


def _zoom_to(start: int, end: int) -> None:
    st.session_state[ZOOM_KEY] = (start, end)


def _strip_zoom(n_tokens: int, start: int, end: int) -> tuple[int, int]:
    """The range of positions the strip draws: the whole prompt (binned when longer than `plots.MAX_COLUMNS`) or
    a zoomed range, at full resolution once it is no wider than that."""
    if n_tokens <= plots.MAX_COLUMNS:
        return 0, n_tokens
    zoom = st.session_state.get(ZOOM_KEY)
    if not (isinstance(zoom, tuple | list) and len(zoom) == 2 and 0 <= zoom[0] < zoom[1] <= n_tokens):
        st.session_state[ZOOM_KEY] = (0, n_tokens)
    cols = st.columns([4, 1, 1])
    low, high = cols[0].slider("Strip range (token positions; a range of ≤ "
                               f"{plots.MAX_COLUMNS:,} tokens is drawn token by token)", 0, n_tokens, step=1,
                               key=ZOOM_KEY)
    middle = (start + end) // 2
    first = max(0, min(middle - plots.MAX_COLUMNS // 2, n_tokens - plots.MAX_COLUMNS))
    cols[1].button("Zoom to the window", key="tok_zoom_window", on_click=_zoom_to,
                   args=(first, first + plots.MAX_COLUMNS), width="stretch",
                   help="Draw the positions around the token window, one column per token.")
    cols[2].button("Whole prompt", key="tok_zoom_all", on_click=_zoom_to, args=(0, n_tokens), width="stretch")
    return int(low), int(max(high, low + 1))


def _decode_eviction(record, tokenizer, followed, layer_index: int, head_index: int, table, start: int, end: int,
                     legend_slot, view_slot, slider_slot, memory_slot) -> None:
    """A run with decode-time eviction: the step slider, the prompt and generated tokens held after token n,
    and the cache's size over the answer (`kvcrush.explain.decode_cache` rebuilds what is held from the eviction
    records). `tokenizer` and `followed` (the followed span, or None) come from the page."""
    result = record.result
    interval = int(result.trace.policy.get("decode_interval") or 0)
    line = decode_cache.timeline(result, layer_index, interval)
    n_generated = line.n_generated
    if st.session_state.get(STEP_KEY, 0) > n_generated:
        st.session_state[STEP_KEY] = n_generated
    with slider_slot:
        step = st.slider("Cache after generated token n (0: right after the prompt's compression)", 0, n_generated,
                         n_generated, key=STEP_KEY,
                         help=f"Decode-time eviction (k = {interval}): whenever this layer's cache holds "
                              f"T + k = {line.budget + interval} tokens per head, the policy evicts it back to "
                              f"T = {line.budget}.")
        view = decode_cache.step_view(line, head_index, step)
        shown = tok.mark_decode_evicted(table, view.prompt) if step else table
        evictions = sum(1 for s in line.steps if s <= line.in_cache(step))
        st.caption(f"After generated token {step}: KV head {head_index} of layer {layer_index} holds "
                   f"**{view.tokens:,}** tokens ({int(view.prompt.sum()):,} of the prompt, "
                   f"{int(view.appended.sum())} of {line.n_appended} question/template tokens, "
                   f"{int(view.generated.sum())} of {len(view.generated)} generated ones fed back) · "
                   f"{evictions} decode-time eviction(s) in this layer so far")
        strings = [tokenizer.decode([i]) for i in result.new_token_ids[: len(view.generated)]]
        st.html(tok.generated_html(strings, view.generated, line.first_generated))
        if step == n_generated and n_generated:
            st.caption("The last generated token is never fed back into the cache (decoding stops after "
                       "choosing it).")
    legend_slot.html(tok.legend_html(tok.counts(shown["status_code"].to_numpy()), tok.bit_counts(shown)))
    view_slot.html(tok.tokens_html(shown, start, end, (followed.start, followed.end) if followed else None))
    with memory_slot.container(key="decode_memory", border=True):
        st.markdown("**Cache size while decoding**")
        held = decode_cache.held_counts(line, head_index)
        without = decode_cache.counts_without_eviction(line)
        st.plotly_chart(plots.decode_cache_curve(held, without, line.budget + interval, step,
                                                 f"Layer {layer_index}, KV head {head_index}: tokens held per head"),
                        key="tok_decode_curve", config={"displayModeBar": False})
        cols = st.columns(4)
        computed = decode_cache.bytes_without_eviction(result)
        final = result.kv_bytes_final
        cols[0].metric("KV after answer", format_bytes(final) if final is not None else "n/a",
                       help="Bytes of the whole cache after the answer (every layer), measured from its tensors.")
        cols[1].metric("Without decode-time eviction", format_bytes(computed) if computed is not None else "n/a",
                       help="Computed, not measured: every layer's T + the appended question/template tokens + "
                            "the generated tokens fed back, at the bytes per token of the compressed cache.")
        cols[2].metric("Peak tokens per head", f"{result.peak_cache_tokens:,}" if result.peak_cache_tokens else "n/a",
                       help="The most tokens any head of any layer held while decoding.")
        cols[3].metric("Decode-time eviction", seconds(result.timings.decode_evict_s),
                       help=f"Time spent evicting while decoding ({len(result.decode_evictions)} evictions over "
                            f"all layers), part of the decode time {seconds(result.timings.decode_s)}.")


opened = page.single_run("Tokens")
config, lm, live, answers, slots = opened.config, opened.lm, opened.live, opened.answers, opened.slots
trace = live.trace
label, budget_label = live.request.policy.label, live.request.policy.budget_text

clicked_token = token_click.clicked("tok_click")
_apply_grid_click()
n_layers, kv_heads = len(trace.layers), trace.layers[0].kept.shape[0]
left, right = st.columns([3, 1.25], gap="medium")
span_box = st.container(key="span_view", border=True)
why_box = st.container(key="why_view", border=True)
with span_box:
    st.subheader("Follow a span")
    choice = span_view.picker(trace, answers, st.session_state.get("tok_find", ""), live.request.prompt.digest,
                              lambda: span_view.copied_by_full_cache(config, lm))
followed = choice.span
_follow(followed, choice.pointed, trace.n_context)  # the first visit points the token window at the gold answer
with left:
    chooser = st.columns([1, 1, 3])
    layer_index = pick.layer("tok", n_layers, chooser[0])
    head_index = pick.head("tok", kv_heads, chooser[1])
    layer = trace.layers[layer_index]
    table = tok.token_table(trace, layer, head_index)
    status = table["status_code"].to_numpy()
    status_counts = tok.counts(status)
    kept = int((status != EVICTED).sum())
    chooser[2].markdown(
        f"<div style='padding-top:1.9rem'>Layer {layer_index}, KV head {head_index}: <b>{kept:,}</b> of "
        f"{layer.n_tokens:,} tokens kept ({kept / max(layer.n_tokens, 1):.1%}), budget {layer.budget:,}"
        f"{' (no eviction: budget ≥ prompt)' if layer.no_op else ''}</div>",
        unsafe_allow_html=True,
    )
    legend_slot = st.empty()
    legend_slot.html(tok.legend_html(status_counts, tok.bit_counts(table)))
    runs.begin_answer(live, runs.HEAD_START_S)  # counts are out; the token view and charts draw while it decodes
    slider_slot = st.container()  # the decode-time eviction step slider, once the answer is done
    start, end = _window(trace.token_strings, layer.n_tokens)
    st.caption(f"Tokens {start:,}–{end - 1:,} of {layer.n_tokens:,} · {page.trace_notes(trace)} · "
               "hover a token for its score, signature and distance")
    with st.container(key="token_view"):
        view_slot = st.empty()
        view_slot.html(tok.tokens_html(table, start, end, (followed.start, followed.end) if followed else None))
    st.caption("Click a token to see why it was kept or evicted (below). The followed span is outlined.")
    memory_slot = st.empty()

with right:
    color_label = st.radio("Grid colour", list(COLOR_BY), key="tok_grid_color", horizontal=False)
    kept_share, agreement = head_agreement(trace)
    values = agreement if COLOR_BY[color_label] == "agreement" else kept_share
    figure = plots.head_grid(values, kept_share, agreement, (layer_index, head_index),
                             "agreement" if COLOR_BY[color_label] == "agreement" else "kept")
    st.plotly_chart(figure, key=GRID_KEY, on_select="rerun", selection_mode="points",
                    config={"displayModeBar": False})
    st.caption("Click a square to show that layer and head.")

with span_box:
    if followed is not None:
        fate = explain.span_fate(trace, followed.start, followed.end)
        compared = _compared_policy(live.request.policy)
        other = None
        if compared is not None and st.toggle(f"Compare with {compared.label}", value=True, key="span_compare"):
            other_trace = runs.other_selection(lm, live, compared)
            if other_trace is not None:
                other = (compared.label, explain.span_fate(other_trace, followed.start, followed.end))
        span_view.render(fate, label, (layer_index, head_index), other)

with why_box:
    st.subheader("Why this token?")
    position = why_view.position_input(trace.n_context, clicked_token, followed.start if followed else None)
    why_view.render(explain.why_token(trace, position), layer_index, head_index)

statuses = tok.status_matrix(trace, head_index)
strip_title = f"Every layer's decisions for KV head {head_index} (outlined: this layer and window)"
st.plotly_chart(plots.status_strip(statuses, layer_index, (start, end), strip_title,
                                   _strip_zoom(statuses.shape[1], start, end)),
                key="tok_strip", config={"displayModeBar": False})

with st.expander("Token table and downloads"):
    st.dataframe(table.drop(columns=["status_code"]).iloc[start:end], hide_index=True, key="tok_table")
    cols = st.columns(3)
    with cols[0]:
        export.trace_json_button(live.latest, f"{label}-{budget_label}", "tok_json")
    with cols[1]:
        export.csv_button(table.drop(columns=["status_code"]),
                          f"tokens-layer{layer_index}-head{head_index}-{label}", "tok_csv")

record = opened.finish()  # stream the rest of the answer into its box at the top
if record is not None and record.result.decode_evictions:
    _decode_eviction(record, lm.tokenizer, followed, layer_index, head_index, table, start, end, legend_slot,
                     view_slot, slider_slot, memory_slot)
