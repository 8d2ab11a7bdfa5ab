"""The explanation views in AppTest on the tiny model: follow a span, why a token, the walk, what the answer used.

Each view's numbers are checked against `kvcrush.explain` / `kvcrush.attention_use` on the very trace the
session holds, so a view that drew something else would fail.
"""

from __future__ import annotations

import html
import re

import pytest

from kvcrush import explain
from kvcrush.attention_use import CATEGORIES
from tests.app.conftest import EARLIER_DEFAULTS
from tests.app.helpers import chart, decode_array, html_bodies, no_errors, token_view
from ui.state import RunRequest


def _trace(at):
    """The trace of the run the page shows (the session's current settings)."""
    request = RunRequest.from_config(at.session_state["_config"])
    record = at.session_state["_results"].get(request.key)
    return record.result.trace if record is not None else at.session_state["_selections"].get(request.selection_key)


def _markdown(at, pattern: str) -> str:
    return next(m.value for m in at.markdown if re.search(pattern, m.value))


def test_the_first_screen_follows_the_needle(app, monkeypatch):
    for name in EARLIER_DEFAULTS:
        monkeypatch.delenv(name)
    at = app.run()
    no_errors(at)
    assert at.selectbox(key="example").value == "Needle in essays (~2k tokens)"
    assert at.slider(key="budget_pct").value == 50 and at.checkbox(key="query_aware").value
    assert at.radio(key="span_source").value == "gold answer"
    answer = at.session_state["_config"].prompt.answers[0]
    trace = _trace(at)
    span = explain.answer_spans(trace.token_strings[: trace.n_context], (answer,))[0]
    # The token window starts at the needle, which is outlined, and "Why this token?" explains its first token.
    assert f'data-pos="{span.start}" data-followed="1"' in token_view(at)
    assert at.number_input(key="why_pos").value == span.start
    fate = explain.span_fate(trace, span.start, span.end)
    assert fate.summary() in _markdown(at, "kept whole in")
    grid = chart(at, "span_fate_grid")
    assert list(grid["data"][0]["text"]) == [explain.FATE_NAMES[c] for c in fate.codes.flatten().tolist()]
    assert any(m.value.startswith("**snapkv** at the same budget") for m in at.markdown)  # KVCrush's base beside it


def test_follow_a_span_by_positions_and_find_text(app):
    at = app.run()
    at.radio(key="span_source").set_value("token positions").run()
    at.slider(key="span_range").set_value((100, 109)).run()
    no_errors(at)
    trace = _trace(at)
    fate = explain.span_fate(trace, 100, 110)
    assert fate.summary() in _markdown(at, "kept whole in")
    lost = at.dataframe[0].value
    assert len(lost) == len(fate.lost())
    at.slider(key="tok_start").set_value(50).run()
    assert token_view(at).count(" data-followed=") == 10  # the followed span is outlined in the token view
    at.text_input(key="tok_find").input("special magic number").run()
    at.radio(key="span_source").set_value("Find text hit").run()
    no_errors(at)
    hit = explain.text_spans(trace.token_strings[: trace.n_context], "special magic number")[0]
    assert f"(#{hit.start}–#{hit.end - 1})" in _markdown(at, "kept whole in")
    assert {button.proto.label for button in at.get("download_button")} >= {"Span per layer, head and token (CSV)",
                                                                            "Span fate (JSON)"}


def test_a_click_on_the_fate_map_picks_that_layer_and_head(app):
    at = app.run()
    at.radio(key="span_source").set_value("token positions").run()
    at.session_state["span_fate_grid"] = {"selection": {"points": [{"curve_number": 0, "x": 1, "y": 1}]}}
    at.run()
    no_errors(at)
    assert at.selectbox(key="tok_layer").value == 1 and at.selectbox(key="tok_head").value == 1


def test_why_this_token_agrees_with_the_library(app):
    at = app.run()
    at.number_input(key="why_pos").set_value(300).run()
    no_errors(at)
    trace = _trace(at)
    why = explain.why_token(trace, 300)
    assert why.summary().split(" is kept")[1] in _markdown(at, r"^#300 ")
    assert html.escape(why.decision(0, 0).sentence.split(": ", 1)[1]) in _markdown(at, r"\*\*Layer 0, KV head 0:")
    sentences = next(body for body in html_bodies(at) if 'class="kv-why"' in body)
    assert sentences.count("<li") == len(why.decisions) == 4
    table = next(frame.value for frame in at.dataframe if "cut-off" in frame.value.columns)
    assert table["rank"].tolist() == [d.rank for d in why.decisions]
    labels = {button.proto.label for button in at.get("download_button")}
    assert {"Download table (CSV)", "Download (JSON)"} <= labels  # the compact table's downloads
    at.selectbox(key="tok_layer").set_value(1).run()
    assert html.escape(why.decision(1, 0).sentence.split(": ", 1)[1]) in _markdown(at, r"\*\*Layer 1, KV head 0:")


@pytest.mark.parametrize("options", [{}, {"opt_kvcrush_granularity": "block"}, {"opt_kvcrush_anchors": 3}])
def test_walk_every_step_with_the_run_numbers(app, options):
    at = app.run()
    for key, value in options.items():
        widget = at.selectbox(key=key) if key.endswith("granularity") else at.number_input(key=key)
        widget.set_value(value).run()
    at.switch_page("pages/walk.py").run()
    no_errors(at)
    at.selectbox(key="walk_head").set_value(1).run()
    steps = explain.walk_steps(_trace(at), 0, 1)
    assert len(steps) == 9
    for index, step in enumerate(steps):
        no_errors(at)
        assert at.subheader[0].value == step.title
        assert any(m.value == step.text for m in at.markdown)
        numbers = at.dataframe[0].value
        assert numbers["value"].tolist() == [str(v) for v in step.numbers.values()]
        if index < len(steps) - 1:
            at.button(key="walk_next").click().run()
    assert at.button(key="walk_next").disabled
    assert {"All steps (JSON)", "All steps (CSV)"} <= {button.proto.label for button in at.get("download_button")}
    at.button(key="walk_back").click().run()
    assert at.subheader[0].value == steps[-2].title
    at.selectbox(key="walk_layer").set_value(1).run()  # another layer keeps the same step
    assert at.subheader[0].value == steps[-2].title


def test_walk_of_a_policy_without_kvcrush_has_three_steps(app):
    at = app.run()
    at.selectbox(key="policy").set_value("snapkv").run()
    at.switch_page("pages/walk.py").run()
    no_errors(at)
    assert any("need a kvcrush run" in info.value for info in at.info)
    titles = []
    for _ in range(3):
        titles.append(at.subheader[0].value)
        if not at.button(key="walk_next").disabled:
            at.button(key="walk_next").click().run()
    assert titles == ["Scores and the budget split", "Importance cut-off", "The final kept set"]


def test_attention_page_records_only_when_asked(app):
    at = app.run()
    at.switch_page("pages/attention.py").run()
    no_errors(at)
    assert any("Record what the answer attends to" in info.value for info in at.info)
    assert not at.get("plotly_chart")
    at.toggle(key="record_attention").set_value(True).run()
    no_errors(at)
    request = RunRequest.from_config(at.session_state["_config"])
    use = at.session_state["_results"].get(request.key).attention
    shown = {m.label: m.value for m in at.metric if m.label in CATEGORIES}
    assert shown == {name: f"{share:.1%}" for name, share in zip(CATEGORIES, use.overall().tolist(), strict=True)}
    layers = chart(at, "att_layers")
    assert [trace["name"] for trace in layers["data"][: len(CATEGORIES)]] == list(CATEGORIES)
    assert decode_array(layers["data"][0]["y"]).shape == (2,)  # the tiny model's 2 layers
    top = chart(at, "att_top")
    assert len(decode_array(top["data"][0]["x"])) == 20
    assert {"Per layer (CSV)", "Per generated token (CSV)", "Everything (JSON)"} <= {
        button.proto.label for button in at.get("download_button")}


def test_copied_span_runs_the_full_cache_beside_the_run(app):
    at = app.run()
    at.radio(key="span_source").set_value("copied by the full cache's answer").run()
    no_errors(at)
    assert any(c.value.startswith("The full cache answered:") for c in at.caption)
    full = RunRequest.from_config(at.session_state["_config"], at.session_state["_config"].policy.with_name("full"))
    assert at.session_state["_results"].get(full.key) is not None
