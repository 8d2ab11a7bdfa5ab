"""A run's header on a single-run page: its summary (KV bytes, stage times) and its answer, finished or streaming.

`ui.runs` streams a live run's answer into these slots; `ui.page` lays them out at the top of a page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from kvcrush.metrics import contains_answer
from kvcrush.sizes import format_bytes
from ui.fmt import ratio, seconds
from ui.state import RunRecord, RunRequest


@dataclass
class RunSlots:
    """Two placeholders at the top of a single-run page: the run's summary and its answer.

    Filled at once for a finished run; for a live one the page renders the selection below them first,
    then `ui.runs.finish` streams the answer in and replaces the pending summary with the final one.
    """

    summary: DeltaGenerator
    answer: DeltaGenerator


def run_header(live, answers: tuple[str, ...] = ()) -> RunSlots:
    """The slots for `live` (a `ui.runs.LiveRun`), already filled when it finished earlier."""
    slots = RunSlots(st.empty(), st.empty())
    if live.record is not None:
        fill(slots, live.record, answers)
    else:
        request = live.request
        with slots.summary.container(key="run_pending"):
            st.markdown(f"**{request.policy.label}** at **{request.policy.budget_text}** · kept tokens ready in "
                        f"{seconds(live.selected_s)} · decoding the answer… · {request.prompt.name}")
        streaming(slots, request, "", 0)
    return slots


def fill(slots: RunSlots, record: RunRecord, answers: tuple[str, ...] = ()) -> None:
    with slots.summary.container():
        summary(record)
    with slots.answer.container():
        generated(record, answers)


def summary(record: RunRecord) -> None:
    """KV bytes before/after and the time of each stage, as metrics."""
    result = record.result
    timings = result.timings
    policy = record.request.policy
    settings = f" ({policy.settings_text})" if policy.settings_text else ""
    with st.container(key="run_summary"):
        st.markdown(f"**{record.label}**{settings} at **{policy.budget_text}** · whole run "
                    f"{seconds(record.wall_s)} · {record.request.prompt.name}")
        cols = st.columns(6)
        cols[0].metric("KV cache before", format_bytes(result.kv_bytes_before))
        cols[1].metric("KV cache after", format_bytes(result.kv_bytes_after),
                       delta=f"-{1 - result.compression:.0%}" if result.compression < 1 else None,
                       delta_color="inverse" if result.compression < 1 else "off")
        cols[2].metric("Reduction", ratio(result.kv_bytes_before, result.kv_bytes_after))
        reused = " It ran once for this prompt; this run reused it." if timings.prefill_reused else ""
        cols[3].metric("Prefill (reused)" if timings.prefill_reused else "Prefill", seconds(timings.prefill_s),
                       help="The model's forward pass over the prompt, plus appending the question and template "
                            f"tokens to the compressed cache.{reused}")
        scored = "reused from an earlier run on this prompt" if timings.score_reused else "computed in this run"
        cols[4].metric("Policy", seconds(timings.policy_s),
                       help=f"Scoring {seconds(timings.score_s)} ({scored}), then selection and gathering the "
                            f"kept rows {seconds(timings.select_s)}, of which KVCrush {seconds(timings.crush_s)}; "
                            "summed over layers.")
        cols[5].metric("Decode", seconds(timings.decode_s),
                       help=f"{timings.decode_tokens} tokens, {seconds(timings.decode_per_token_s)} per token.")


def _answer_html(body: str, footer: str) -> str:
    return (f'<div class="kv-generated" style="border-left:4px solid #0072B2;padding:6px 12px;'
            f'background:#f5f9fc;white-space:pre-wrap;">{body}</div>'
            f'<div style="font-size:0.8rem;color:#555;margin-top:2px;">{footer}</div>')


def streaming(slots: RunSlots, request: RunRequest, text: str, n_tokens: int) -> None:
    """The answer so far, while it decodes (a cursor marks that more is coming)."""
    body = html.escape(text) + '<span style="color:#0072B2;">▌</span>'
    footer = (f"decoding with {html.escape(request.policy.label)} at {html.escape(request.policy.budget_text)}: "
              f"{n_tokens}/{request.max_new_tokens} tokens")
    slots.answer.html(_answer_html(body, footer).replace('class="kv-generated"', 'class="kv-streaming"', 1))


def generated(record: RunRecord, answers: tuple[str, ...] = ()) -> None:
    text = record.result.text
    shown = html.escape(text) if text.strip() else (
        f"<em>(only whitespace: {len(text)} characters)</em>" if text else "<em>(no text)</em>")
    found = ""
    if answers:
        hit = any(contains_answer(text, a) for a in answers)
        found = (" · <b style='color:#009E73'>answer found</b>" if hit
                 else " · <b style='color:#D55E00'>answer not found</b>")
    st.html(_answer_html(shown, f"generated by {html.escape(record.label)} at "
                                f"{html.escape(record.request.policy.budget_text)}{found}"))
