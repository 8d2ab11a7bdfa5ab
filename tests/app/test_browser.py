"""End to end in Chromium: `streamlit run app.py` on the packaged SmolLM2, a built-in example, every page.

Checks that the first screen follows the needle (the ~2k-token needle, query-aware, 50%), that a click on a
token explains it, that a span of positions can be followed, that a lower budget evicts more tokens in the
kept/evicted view and shrinks the measured KV bytes, that the grid picks a layer and head, that the
Groups page fits a real UMAP map, that the Walk page steps through all nine steps, that recording what the
answer attends to fills the Attention page, and that the Compare page's memory projection follows the
budget. Screenshots of each page and a JSON file of the observed values go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.app.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUT = ARTIFACTS / "browser"
LONG = 240_000  # ms: a 1k-token run of the packaged model on 2 busy CPU cores, or the first UMAP fit


def legend_counts(page) -> dict[str, int]:
    text = page.locator(".kv-legend").inner_text()
    return {name: int(count.replace(",", "")) for name, count in re.findall(r"([a-zA-Z() ]+?) \(([\d,]+)\)", text)}


def metric_value(page, container: str, label: str) -> str:
    metric = page.locator(f'.st-key-{container} [data-testid="stMetric"]').filter(has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def move_slider(page, key: str, presses: int, direction: str) -> None:
    slider = page.locator(f'.st-key-{key} input[type="range"]')
    slider.focus()
    for _ in range(presses):
        slider.press(direction)


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()


def shot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main section, so grow the viewport to fit it first."""
    page.wait_for_timeout(800)  # let Plotly finish drawing
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight ?? 1000")
    page.set_viewport_size({"width": 1500, "height": int(min(max(1000, height), 8000))})
    page.wait_for_timeout(800)
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1500, "height": 1000})


def test_browser_end_to_end(page, streamlit_server):
    from playwright.sync_api import expect

    OUT.mkdir(parents=True, exist_ok=True)
    observed: dict = {}
    page.set_default_timeout(LONG)
    began = time.monotonic()

    # Tokens page, the first screen: the needle in ~2k tokens of essays, query-aware, 50 %, the needle followed.
    page.goto(streamlit_server)
    summary = page.locator(".st-key-run_summary")
    expect(summary).to_contain_text("at 50%", timeout=LONG)
    page.locator(".st-key-token_view span.kvt").first.wait_for()
    expect(summary).to_contain_text("Needle in essays (~2k tokens)")
    observed["first_run_s"] = round(time.monotonic() - began, 1)
    followed = page.locator(".st-key-token_view span.kvt[data-followed]")
    expect(followed.first).to_be_visible()
    needle = [int(p) for p in followed.evaluate_all("spans => spans.map(s => s.dataset.pos)")]
    spans = page.locator(".st-key-span_view")
    expect(spans).to_contain_text("kept whole in")
    expect(spans).to_contain_text("snapkv at the same budget")
    expect(page.locator(".st-key-why_view")).to_contain_text(f"#{needle[0]} ")
    observed.update(needle_positions=needle,
                    span_summary=spans.get_by_text(re.compile(r"kept whole in \d+ of")).first.inner_text())
    title = followed.first.get_attribute("title")
    assert "status:" in title and title.startswith(f"#{needle[0]} ")
    shot(page, "1-tokens-first-screen")

    # Why this token: click a token of the view.
    token = page.locator(".st-key-token_view span.kvt").nth(12)
    position = int(token.get_attribute("data-pos"))
    token.click()
    why = page.locator(".st-key-why_view")
    expect(why).to_contain_text(f"#{position} ", timeout=60_000)
    expect(why).to_contain_text("layer 0, head 0: ")
    observed["why_clicked"] = why.get_by_text(re.compile(r"is kept in \d+ of")).first.inner_text()
    shot(page, "2-why-this-token")

    # Follow a span of positions instead.
    page.locator(".st-key-span_source label").filter(has_text="token positions").click()
    expect(spans.locator(".st-key-span_lost")).to_be_visible(timeout=60_000)
    expect(spans).to_contain_text("(#")
    shot(page, "3-follow-positions")

    before = legend_counts(page)
    kv_before = metric_value(page, "run_summary", "KV cache after")
    evicted_spans = page.locator(".st-key-token_view span.kvt-evicted").count()
    assert before["evicted"] > 0 and before["KVCrush representative"] > 0

    # A lower budget: more evicted tokens, fewer KV bytes.
    started = time.monotonic()
    move_slider(page, "budget_pct", 40, "ArrowLeft")
    expect(summary).to_contain_text("at 10%", timeout=LONG)
    expect(page.locator(".kv-legend")).not_to_contain_text(f"evicted ({before['evicted']:,})")
    observed["rerun_new_budget_s"] = round(time.monotonic() - started, 1)
    after = legend_counts(page)
    kv_after = metric_value(page, "run_summary", "KV cache after")
    assert after["evicted"] > before["evicted"]
    assert after["kept (importance)"] < before["kept (importance)"]
    assert page.locator(".st-key-token_view span.kvt-evicted").count() > evicted_spans
    assert kv_after != kv_before
    observed.update(legend_50=before, legend_10=after, kv_after_50=kv_before, kv_after_10=kv_after)
    shot(page, "4-tokens-budget-10")

    # Clicking a square of the layer x head grid picks that layer and head (the last square: last layer,
    # last KV head).
    points = page.locator(".st-key-tok_grid .scatterlayer .trace").first.locator("path.point")
    last = points.nth(points.count() - 1)
    last.scroll_into_view_if_needed()
    box = last.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    picked = page.get_by_text(re.compile(r"Layer [1-9]\d*, KV head [1-9]\d*: [\d,]+ of")).first  # not Why's line
    expect(picked).to_be_visible(timeout=60_000)
    observed["grid_click"] = re.search(r"Layer \d+, KV head \d+", picked.inner_text()).group(0)

    nav(page, "Signatures")
    page.locator(".st-key-signature_view .js-plotly-plot").wait_for()
    # the page caption ("... middle tokens ... anchor mode ..."), not the sidebar's "Anchor mode" option
    expect(page.get_by_text(re.compile(r"middle tokens.*anchor mode"))).to_be_visible()
    shot(page, "5-signatures")

    nav(page, "Groups")
    page.locator(".st-key-embedding_view .js-plotly-plot").wait_for(timeout=LONG)
    expect(page.locator(".st-key-embedding_view")).to_contain_text("UMAP map of the signatures")
    expect(page.locator(".st-key-bucket_table")).to_be_visible()
    shot(page, "6-groups")

    # Walk: all nine steps of one layer, one screen each.
    nav(page, "Walk")
    step = page.locator(".st-key-walk_step_view h3").first
    expect(step).to_have_text("Scores and the budget split", timeout=LONG)
    titles = [step.inner_text()]
    for index in range(8):
        page.locator(".st-key-walk_next button").click()
        expect(step).not_to_have_text(titles[-1], timeout=60_000)
        titles.append(step.inner_text())
        if titles[-1] in ("Candidates", "Buckets", "The final kept set"):
            shot(page, f"7-walk-{index + 2}-{titles[-1].split()[-1].lower()}")
    assert titles[-1] == "The final kept set" and len(set(titles)) == 9
    observed["walk_steps"] = titles

    # What the answer used: record it, the Attention page fills.
    nav(page, "Attention")
    expect(page.get_by_text("Record what the answer attends to").first).to_be_visible(timeout=LONG)
    page.locator(".st-key-record_attention label").first.click()
    expect(page.locator(".st-key-attention_summary")).to_contain_text("KVCrush representatives", timeout=LONG)
    page.locator(".st-key-att_layers .js-plotly-plot").wait_for()
    observed["attention_summary"] = page.locator(".st-key-attention_summary p").first.inner_text()
    shot(page, "8-attention")
    page.locator(".st-key-record_attention label").first.click()  # off again: plain runs from here

    nav(page, "Compare")
    page.locator(".st-key-cmp_col_snapkv").wait_for(timeout=LONG)
    expect(page.locator(".st-key-cmp_col_kvcrush")).to_be_visible()
    compressed_10 = metric_value(page, "memory_panel", "Compressed")
    assert metric_value(page, "memory_panel", "Full KV cache") == "4.00 GiB"  # Llama-3-8B, 32k tokens
    assert metric_value(page, "memory_panel", "Projected reduction") == "10.00x"
    shot(page, "9-compare")
    # Auto-run off, then a higher budget: the projection follows the sidebar without new runs.
    page.locator(".st-key-auto_run label").first.click()
    move_slider(page, "budget_pct", 15, "ArrowRight")
    expect(page.locator(".st-key-memory_panel")).to_contain_text("4.00x", timeout=60_000)
    compressed_25 = metric_value(page, "memory_panel", "Compressed")
    assert compressed_25 != compressed_10
    observed.update(memory_compressed_10=compressed_10, memory_compressed_25=compressed_25)
    shot(page, "10-compare-memory-25")

    nav(page, "Sweep")
    page.locator(".st-key-sweep_run").wait_for()
    shot(page, "11-sweep")

    observed["total_s"] = round(time.monotonic() - began, 1)
    (OUT / "checks.json").write_text(json.dumps(observed, indent=2))
