"""kvpress presses in the explorer (issue 20): the sidebar offers `kvpress` (any runnable kvpress scorer press) as a
policy and as KVCrush's base, with a press select box whose help is `press_table()`'s description of each press.

AppTest (the tiny random model, about a second a run) checks the sidebar and the Tokens page for both; the browser
test picks kvpress + ExpectedAttentionPress in Chromium on the packaged model and sees kept tokens on the Tokens page.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.app.conftest import ARTIFACTS
from tests.app.helpers import legend_counts, no_errors, token_view
from tests.conftest import kvpress_or_skip

kvpress_or_skip()  # the explorer offers kvpress only where it can be used

from kvcrush.policies.press import press_table, runnable_presses  # noqa: E402

PRESS_KEY = "opt_kvpress_press"  # the kvpress policy's press, alone or as KVCrush's base (one widget key)
LONG = 240_000  # ms: a run of the packaged model on 2 busy CPU cores


def _record(at):
    from ui.state import RunRequest

    return at.session_state["_results"].get(RunRequest.from_config(at.session_state["_config"]).key)


def test_sidebar_offers_kvpress_with_its_runnable_presses(app):
    at = app.run()
    assert "kvpress" in at.selectbox(key="policy").options
    assert "kvpress" in at.selectbox(key="base").options
    at.selectbox(key="policy").set_value("kvpress").run()
    no_errors(at)
    press = at.selectbox(key=PRESS_KEY)
    assert press.value == "ExpectedAttentionPress"
    assert set(press.options) == set(runnable_presses())
    assert table_reason("ExpectedAttentionPress") in press.help and table_reason("KnormPress") in press.help
    record = _record(at)
    assert record.request.policy.name == "kvpress"
    assert record.result.trace.policy["press"].startswith("ExpectedAttentionPress(")
    counts = legend_counts(at)
    assert counts["kept"] > 0 and counts["evicted"] > 0
    assert "kvt kvt-kept" in token_view(at)

    at.selectbox(key=PRESS_KEY).set_value("KnormPress").run()
    no_errors(at)
    assert _record(at).result.trace.policy["press"] == "KnormPress()"


def test_kvcrush_over_a_press_in_the_sidebar(app):
    at = app.run()
    at.selectbox(key="base").set_value("kvpress").run()
    no_errors(at)
    assert at.selectbox(key=PRESS_KEY).value == "ExpectedAttentionPress"
    record = _record(at)
    assert record.request.policy.base == "kvpress"
    assert record.result.trace.policy["base"]["press"].startswith("ExpectedAttentionPress(")
    counts = legend_counts(at)
    assert counts["kept"] > 0 and counts["representative"] > 0


def table_reason(name: str) -> str:
    return press_table()[name].reason


@pytest.mark.browser
@pytest.mark.slow
def test_browser_kvpress_expected_attention_keeps_tokens(page):
    """Chromium on the packaged model: pick kvpress (ExpectedAttentionPress by default) and see kept tokens."""
    from playwright.sync_api import expect

    from tests.streamlit_server import app_env, running_app

    out = ARTIFACTS / "browser"
    out.mkdir(parents=True, exist_ok=True)
    env = app_env(KVCRUSH_APP_MAX_NEW_TOKENS="4", KVCRUSH_APP_EXAMPLE="Needle in essays (~1k tokens)")
    with running_app(env, ARTIFACTS / "streamlit-server-press.log") as url:
        page.set_default_timeout(LONG)
        page.goto(url)
        summary = page.locator(".st-key-run_summary")
        expect(summary).to_contain_text("kvcrush", timeout=LONG)  # the first screen's own run
        page.locator(".st-key-token_view span.kvt").first.wait_for()

        started = time.monotonic()
        page.locator(".st-key-policy input").click()  # Streamlit's selectbox is a combobox input
        page.get_by_role("option", name="kvpress", exact=True).click()
        expect(page.locator(f".st-key-{PRESS_KEY} input")).to_have_value("ExpectedAttentionPress", timeout=60_000)
        expect(summary).to_contain_text("kvpress (press=ExpectedAttentionPress)", timeout=LONG)
        kept = page.locator(".st-key-token_view span.kvt-kept")
        expect(kept.first).to_be_visible()
        assert kept.count() > 0 and page.locator(".st-key-token_view span.kvt-evicted").count() > 0
        legend = page.locator(".kv-legend").inner_text()
        assert re.search(r"kept \(importance\) \([1-9][\d,]*\)", legend), legend
        page.screenshot(path=str(out / "kvpress-expected-attention.png"), full_page=True)
        (out / "kvpress-expected-attention.txt").write_text(
            f"switch to kvpress and run: {time.monotonic() - started:.1f} s\nlegend: {legend}\n")
