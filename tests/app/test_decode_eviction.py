"""Decode-time eviction in the app: the sidebar's decode_interval, the Tokens page's step slider and memory
panel, the Compare page's KV after the answer, and `kvcrush.explain.decode_cache` against the engine's final cache."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.app.helpers import chart, decode_array, html_bodies, legend_counts, metric, no_errors, token_view

INTERVAL_KEY = "opt_kvcrush_decode_interval"  # KVCrush's own (make_policy keeps it off the base)


def _decode_run(app, interval: int = 8, new_tokens: int = 40):
    at = app.run()
    at.number_input(key="max_new_tokens").set_value(new_tokens)
    at.number_input(key=INTERVAL_KEY).set_value(interval).run()
    return at


def _record(at):
    from ui.state import RunRequest

    return at.session_state["_results"].get(RunRequest.from_config(at.session_state["_config"]).key)


def test_decode_interval_widget_has_its_help(app):
    at = app.run()
    widget = at.number_input(key=INTERVAL_KEY)
    assert widget.value == 0
    assert "Decode-time eviction" in widget.help


def test_decode_interval_shows_the_step_slider_and_memory_panel(app):
    at = _decode_run(app)
    no_errors(at)
    record = _record(at)
    result = record.result
    assert result.decode_evictions, "the run should evict while decoding"
    n_generated = len(result.new_token_ids)
    slider = at.slider(key="tok_step")
    assert slider.max == n_generated and slider.value == n_generated
    counts = legend_counts(at)
    assert counts["decode_evicted"] > 0  # prompt tokens evicted while the answer was decoded
    assert "kvt kvt-decode_evicted" in token_view(at)
    strip = next(body for body in html_bodies(at) if 'class="kv-generated-strip"' in body)
    assert len(re.findall(r'class="kvg kvg-', strip)) == n_generated - 1  # the last token is never fed back
    assert "kvg-evicted" in strip and "kvg-held" in strip
    curve = chart(at, "tok_decode_curve")
    held = decode_array(curve["data"][1]["y"]).astype(int)
    without = decode_array(curve["data"][0]["y"]).astype(int)
    budget = int(result.trace.layers[0].kept.shape[1])
    first = min(e.step for e in result.decode_evictions if e.layer == 0)
    assert held[first] == budget and held[first:].max() <= budget + 8  # flat at <= T + k once evicting
    assert without[-1] > held[-1]
    assert metric(at, "KV after answer") and metric(at, "Without decode-time eviction")

    at.slider(key="tok_step").set_value(0).run()  # right after the prompt's compression: the trace as before
    no_errors(at)
    assert "decode_evicted" not in legend_counts(at)
    assert "kvt kvt-decode_evicted" not in token_view(at)


def test_decode_interval_zero_shows_no_slider(app):
    at = app.run()
    at.number_input(key="max_new_tokens").set_value(40).run()
    no_errors(at)
    assert not _record(at).result.decode_evictions
    assert not [s for s in at.slider if s.key == "tok_step"]
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-tok_decode_curve")]


def test_h2o_refuses_decode_interval_and_the_app_recovers(app):
    at = app.run()
    at.selectbox(key="policy").set_value("h2o").run()
    no_errors(at)
    key = next(w.key for w in at.number_input if w.key.endswith("_decode_interval"))
    at.number_input(key=key).set_value(8).run()
    assert not at.exception
    assert any("cannot evict while decoding" in error.value for error in at.error)
    at.number_input(key=key).set_value(0).run()
    no_errors(at)
    assert token_view(at)


def test_compare_page_shows_kv_after_the_answer(app):
    at = _decode_run(app, new_tokens=24)
    at.switch_page("pages/compare.py").run()
    no_errors(at)
    values = [m.value for m in at.metric if m.label == "KV after answer"]
    assert len(values) == 2
    table = at.dataframe[0].value
    assert "kv_bytes_final" in table.columns and table["kv_bytes_final"].notna().all()


@pytest.mark.parametrize(("name", "query_aware"), [("kvcrush", False), ("snapkv", True), ("pyramidkv", False)])
def test_held_positions_match_the_final_cache(name, query_aware):
    import kvcrush
    from kvcrush.explain import decode_cache

    lm = kvcrush.load_model("random:tiny")
    context = " ".join(f"Line {i}: the code word is w{i * 7 % 97}." for i in range(60))
    prepared = kvcrush.prepare(lm, context, "What is the code word of line 5?", query_aware=query_aware)
    result = prepared.generate(kvcrush.make_policy(name, budget=0.25, decode_interval=8), max_new_tokens=48)
    assert result.decode_evictions and result.cache_positions is not None
    assert result.n_appended == len(prepared.appended_ids)
    last = len(result.new_token_ids)
    for layer_index, final in enumerate(result.cache_positions):
        line = decode_cache.timeline(result, layer_index, 8)
        for head in range(final.shape[0]):
            expected = np.sort(final[head].numpy())
            assert np.array_equal(decode_cache.held_positions(line, head, last), expected), (layer_index, head)
            view = decode_cache.step_view(line, head, last)
            assert view.tokens == len(expected)
        counts = decode_cache.held_counts(line, 0)
        assert counts[0] == line.budget + line.n_appended
        assert counts.max() <= max(counts[0], line.budget + 8 + 32)  # T + k, plus SnapKV's window at most
    plain = prepared.generate(kvcrush.make_policy(name, budget=0.25), max_new_tokens=48)
    if len(plain.new_token_ids) == last:
        assert decode_cache.bytes_without_eviction(result) == plain.kv_bytes_final
