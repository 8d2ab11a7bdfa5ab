"""Follow a span (Tokens page): pick prompt tokens, then draw what every layer and KV head did with them.

The span comes from a gold answer of a built-in example, a "Find text" hit, a range of positions or a
run of tokens the full cache's answer copied from the prompt (`kvcrush.explain.span_search`); its fate is
`kvcrush.explain.span_fate` of the run's trace, optionally beside another policy's at the same budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

import kvcrush
from kvcrush.explain import FATE_NAMES, SpanFate, TokenSpan, answer_spans, copied_spans, text_spans
from kvcrush.trace import RunTrace, to_jsonable
from ui import explain_plots, export, runs
from ui.state import AppConfig

GOLD, FIND, RANGE, COPIED = "gold answer", "Find text hit", "token positions", "copied by the full cache's answer"
SOURCE_KEY = "span_source"
POINTED = "_span_pointed"  # the prompt whose first visit already pointed the view at its gold answer
FATE_KEY = "span_fate_grid"


@dataclass
class SpanChoice:
    """The followed span, the sources offered for it, and whether this is the prompt's first visit (the page
    then moves its token window to the span)."""

    span: TokenSpan | None
    sources: tuple[str, ...]
    pointed: bool = False


def _label(trace: RunTrace, span: TokenSpan) -> str:
    text = "".join(trace.token_strings[span.start : span.end]).replace("\n", "↵").strip()
    text = text if len(text) <= 40 else text[:39] + "…"
    return f"{text!r} · #{span.start}–#{span.end - 1} ({span.n_tokens} tokens)"


def _choose(trace: RunTrace, spans: list[TokenSpan], key: str) -> TokenSpan | None:
    if not spans:
        return None
    if len(spans) == 1:
        return spans[0]
    index = st.selectbox("Occurrence", range(len(spans)), format_func=lambda i: _label(trace, spans[i]), key=key)
    return spans[int(index)]


def first_visit(prompt_digest: str, gold: list[TokenSpan]) -> TokenSpan | None:
    """The gold answer's span the first time this session shows this prompt (then never again)."""
    if not gold or st.session_state.get(POINTED) == prompt_digest:
        return None
    st.session_state[POINTED] = prompt_digest
    st.session_state[SOURCE_KEY] = GOLD
    return gold[0]


def picker(trace: RunTrace, answers: tuple[str, ...], find_text: str, prompt_digest: str,
           copied: Callable[[], list[TokenSpan] | None]) -> SpanChoice:
    """The span picker; `copied()` runs the full cache (once) and returns the runs its answer copied."""
    budgeted = trace.token_strings[: trace.n_context]
    gold = answer_spans(budgeted, answers)
    pointed = first_visit(prompt_digest, gold) is not None
    sources = tuple(s for s, offered in ((GOLD, bool(gold)), (FIND, True), (RANGE, True), (COPIED, True)) if offered)
    if st.session_state.get(SOURCE_KEY) not in sources:
        st.session_state[SOURCE_KEY] = sources[0]
    cols = st.columns([2.2, 3])
    with cols[0]:
        source = st.radio("Follow", sources, key=SOURCE_KEY, horizontal=True,
                          help="Which prompt tokens to follow through every layer and KV head.")
    with cols[1]:
        span = _pick(trace, source, gold, budgeted, find_text, copied)
    return SpanChoice(span, sources, pointed)


def _pick(trace: RunTrace, source: str, gold: list[TokenSpan], budgeted: list[str], find_text: str,
          copied: Callable[[], list[TokenSpan] | None]) -> TokenSpan | None:
    if source == GOLD:
        return _choose(trace, gold, "span_gold")
    if source == FIND:
        hits = text_spans(budgeted, find_text) if find_text.strip() else []
        if not hits:
            st.caption("Type a text in **Find text** above; its hits show up here.")
        return _choose(trace, hits, "span_find")
    if source == RANGE:
        n = trace.n_context
        default = (n // 2, min(n - 1, n // 2 + 7))
        start, end = st.slider("Token positions", 0, n - 1, default, key="span_range")
        return TokenSpan(int(start), int(end) + 1, "positions")
    spans = copied()
    if spans is None:
        return None
    if not spans:
        st.caption("The full cache's answer copied no run of 3 or more tokens from the prompt.")
    return _choose(trace, spans, "span_copied")


def copied_by_full_cache(config: AppConfig, lm: kvcrush.LoadedModel) -> list[TokenSpan] | None:
    """Runs of tokens the full cache's answer copied from the prompt (runs the full cache once, beside the
    page's own run); None when that run failed."""
    record = runs.reference_run(config, lm, supersede=False)
    if record is None or config.prompt is None:
        return None
    st.caption(f"The full cache answered: {record.result.text.strip()!r}")
    encoded = kvcrush.encode_prompt(lm.tokenizer, config.prompt.context, config.prompt.question)
    budgeted = encoded.context_ids + (encoded.question_ids if config.options.query_aware else [])
    return copied_spans(budgeted, record.result.new_token_ids)


def fate_frame(fate: SpanFate) -> pd.DataFrame:
    """Where the span was lost: one row per layer and KV head that evicted part of it."""
    rows = []
    for item in fate.lost():
        stand = ", ".join(f"#{m}→#{r}" for m, r in zip(item.stood_in, item.representatives, strict=True))
        rows.append({"layer": item.layer, "kv_head": item.head, "fate": FATE_NAMES[item.fate],
                     "evicted": " ".join(f"#{p}" for p in item.missing), "stood in (token→representative)": stand})
    return pd.DataFrame(rows, columns=["layer", "kv_head", "fate", "evicted", "stood in (token→representative)"])


def render(fate: SpanFate, label: str, selected: tuple[int, int], other: tuple[str, SpanFate] | None = None) -> None:
    """The fate map(s), counts, where the span was lost, and downloads."""
    st.markdown(f"**{label}**: {fate.summary()}")
    columns = st.columns(2 if other is not None else [1.1, 1.6])
    with columns[0]:
        st.plotly_chart(explain_plots.fate_grid(fate.codes.numpy(), selected, f"{label}: the span per layer and head"),
                        key=FATE_KEY, on_select="rerun", selection_mode="points", config={"displayModeBar": False})
    if other is not None:
        other_label, other_fate = other
        with columns[1]:
            st.plotly_chart(explain_plots.fate_grid(other_fate.codes.numpy(), selected,
                                                    f"{other_label}: the same span"),
                            key="span_fate_other", config={"displayModeBar": False})
        st.markdown(f"**{other_label}** at the same budget: {other_fate.summary()}")
    target = columns[1] if other is None else st.container()
    with target:
        frame = fate_frame(fate)
        with st.container(key="span_lost"):
            if frame.empty:
                st.success("Every layer and KV head kept every token of the span.")
            else:
                st.dataframe(frame, hide_index=True, height=min(360, 38 + 35 * len(frame)))
        cols = st.columns(2)
        with cols[0]:
            export.csv_button(pd.DataFrame(fate.rows()), f"span-{fate.start}-{fate.end}", "span_csv",
                              "Span per layer, head and token (CSV)")
        with cols[1]:
            export.json_button(lambda: json.dumps(to_jsonable(fate)), f"span-{fate.start}-{fate.end}", "span_json",
                               "Span fate (JSON)")

