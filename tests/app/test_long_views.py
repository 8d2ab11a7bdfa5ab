"""The long built-in example on the tiny model (AppTest): bounded figures, a windowed token view that follows
"Find text" and the followed span, and every needle listed and findable (issue 23)."""

from __future__ import annotations

import re

import pytest

from kvcrush import data, explain
from tests.app.helpers import chart, decode_array, no_errors, token_view
from ui import plots


@pytest.fixture
def long_app(app, monkeypatch):
    monkeypatch.setenv("KVCRUSH_APP_EXAMPLE", data.LONG_EXAMPLE)
    return app


def _positions(view: str) -> list[int]:
    return [int(p) for p in re.findall(r'data-pos="(\d+)"', view)]


def test_long_example_tokens_page_is_bounded_and_follows_find_text_and_spans(long_app):
    at = long_app.run(timeout=240)
    no_errors(at)
    assert at.selectbox(key="example").value == data.LONG_EXAMPLE
    needles = next(c.value for c in at.caption if "needles**" in c.value)
    assert needles.count("special magic numbers for") == len(data.LONG_DEPTHS)
    view = token_view(at)
    positions = _positions(view)
    assert len(positions) == 400  # a page of tokens, not 7.5k spans
    strip = chart(at, "tok_strip")
    z = decode_array(strip["data"][0]["z"])
    assert z.shape[0] == 2 and z.shape[1] <= plots.MAX_COLUMNS and "binned" in strip["layout"]["title"]["text"]
    # The first visit follows the gold answer (the third needle): the window holds it, outlined.
    assert "data-followed" in view
    # Find text moves the window to another needle, far from the gold one.
    example = data.builtin_examples(_tokenizer())[data.LONG_EXAMPLE]
    first_key = example.needles[0].split(" for ", 1)[1].split(" is:")[0]
    at.text_input(key="tok_find").input(first_key).run()
    no_errors(at)
    config = at.session_state["_config"]
    strings = _strings(config)
    hit = explain.text_spans(strings, first_key)[0]
    window = _positions(token_view(at))
    assert window[0] <= hit.start <= window[-1] and window[0] < positions[0]
    # Following the last needle's value as a span moves the window there too.
    last_value = example.needles[-1].rsplit(" ", 1)[1].rstrip(".")
    at.text_input(key="tok_find").input(last_value).run()
    at.radio(key="span_source").set_value("Find text hit").run()
    no_errors(at)
    hit = explain.text_spans(strings, last_value)[0]
    view = token_view(at)
    assert f'data-pos="{hit.start}" data-followed="1"' in view
    # Zoomed, the strip draws token by token.
    at.slider(key="tok_strip_zoom").set_value((1000, 1600)).run()
    no_errors(at)
    z = decode_array(chart(at, "tok_strip")["data"][0]["z"])
    assert z.shape == (2, 600)


def test_long_example_signatures_and_groups_are_bounded(long_app):
    at = long_app.run(timeout=240)
    at.switch_page("pages/signatures.py").run(timeout=240)
    no_errors(at)
    overview = chart(at, "sig_overview")
    assert decode_array(overview["data"][0]["z"]).shape[1] <= plots.MAX_COLUMNS
    bits = chart(at, "sig_heatmap")
    assert len({t["name"]: t for t in bits["data"]}["bits"]["y"]) <= 400
    at.switch_page("pages/groups.py").run(timeout=240)
    no_errors(at)
    points = sum(len(decode_array(t["x"])) for t in chart(at, "grp_map")["data"] if t.get("x") is not None)
    assert points <= plots.MAX_POINTS + 10
    buckets = chart(at, "grp_buckets")
    assert sum(len(decode_array(t["x"])) for t in buckets["data"]) <= 2 * plots.MAX_POINTS
    assert any("sample of" in c.value for c in at.caption)
    # Back on the Tokens page the followed gold answer is still in the window.
    at.switch_page("pages/tokens.py").run(timeout=240)
    no_errors(at)
    assert "data-followed" in token_view(at)


def _tokenizer():
    from kvcrush.models.loading import packaged_tokenizer

    return packaged_tokenizer()


def _strings(config) -> list[str]:
    import kvcrush

    tokenizer = _tokenizer()
    encoded = kvcrush.encode_prompt(tokenizer, config.prompt.context, config.prompt.question)
    return [tokenizer.decode([i]) for i in encoded.context_ids]
