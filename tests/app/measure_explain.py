"""Time the explanation views in Chromium on the packaged model and the built-in ~2k-token needle (not a test).

    PYTHONPATH=. .venv/bin/python tests/app/measure_explain.py [--repeats 5]

Starts `streamlit run app.py` with its defaults (the first screen: KVCrush over SnapKV at 50%, query-aware,
"Needle in essays (~2k tokens)", 32 new tokens) and waits until the run exists (the answer finished). Then,
for each view, it times in the page itself (`performance.now()` and a MutationObserver, no polling) from the
user's input (pointer or key down) until the script run starts (`started_s`), until the view shows the new
content (`shown_s`) and until the script run is over (`idle_s`):

- why: a click on a token of the token view, until "Why this token?" explains that token;
- span: a key press on the "Token positions" range of "Follow a span", until the span's summary changes;
- walk: the Walk page's Next / Back buttons through all nine steps of layer 0, until the step's title changes.

Target (issue 9): under 0.5 s each. Screenshots and a JSON summary go to test-artifacts/measure-explain/.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.streamlit_server import app_env, running_app

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-artifacts" / "measure-explain"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG = 600_000
IDLE = "() => document.querySelector('[data-testid=stApp]').dataset.testScriptState === 'notRunning'"

# Installed before each input: when the input went down, when `selector`'s text first matched `pattern` (a
# regex source) or first differed from `before`, and when the script run was over afterwards.
WATCH = """([selector, pattern, before]) => {
  const marks = {};
  window.__marks = marks;
  const text = () => { const el = document.querySelector(selector); return el ? el.textContent : ''; };
  const regex = pattern ? new RegExp(pattern) : null;
  const check = () => {
    if (marks.start === undefined) return;
    const now = performance.now();
    if (marks.shown === undefined) {
      const t = text();
      if (regex ? regex.test(t) : (t && t !== before)) marks.shown = now;
    }
    const app = document.querySelector('[data-testid=stApp]');
    const over = app.dataset.testScriptState === 'notRunning';
    if (marks.shown !== undefined && marks.idle === undefined && marks.ran && over) marks.idle = now;
    if (app.dataset.testScriptState === 'running' && !marks.ran) { marks.ran = true; marks.running = now; }
  };
  for (const type of ['pointerdown', 'keydown'])
    document.addEventListener(type, () => { if (marks.start === undefined) marks.start = performance.now(); },
                              {capture: true, once: true});
  if (window.__observer) window.__observer.disconnect();
  window.__observer = new MutationObserver(check);
  window.__observer.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def timed(page, selector: str, act, pattern: str = "", before: str = "") -> dict:
    page.wait_for_function(IDLE, timeout=LONG)
    page.evaluate(WATCH, [selector, pattern, before])
    act()
    try:
        page.wait_for_function("() => window.__marks.idle !== undefined", timeout=120_000)
    except Exception:
        print("marks", page.evaluate("() => window.__marks"), page.locator(selector).text_content()[:300], pattern)
        raise
    marks = page.evaluate("() => window.__marks")
    return {"shown_s": round((marks["shown"] - marks["start"]) / 1000, 3),
            "idle_s": round((marks["idle"] - marks["start"]) / 1000, 3),
            "started_s": round((marks["running"] - marks["start"]) / 1000, 3)}


def summary(rows: list[dict]) -> dict:
    return {key: {"median": statistics.median(r[key] for r in rows), "max": max(r[key] for r in rows)}
            for key in ("shown_s", "idle_s")} | {"n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="clicks and key presses per view")
    options = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"example": "Needle in essays (~2k tokens)", "why": [], "span": [], "walk": []}
    with running_app(app_env(), OUT / "server.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(LONG)
        page.goto(url)
        expect(page.locator(".st-key-run_summary")).to_contain_text("whole run", timeout=LONG)  # the run exists
        page.wait_for_function(IDLE, timeout=LONG)

        tokens = page.locator(".st-key-token_view span.kvt")
        for i in range(options.repeats):
            token = tokens.nth(30 + 17 * i)
            position = token.get_attribute("data-pos")
            report["why"].append(timed(page, ".st-key-why_view", token.click, rf"#{position} .* is kept in \d+ of"))
        page.screenshot(path=str(OUT / "why.png"), full_page=True)

        page.locator(".st-key-span_source label").filter(has_text="token positions").click()
        expect(page.locator(".st-key-span_range")).to_be_visible(timeout=LONG)
        page.wait_for_function(IDLE, timeout=LONG)
        thumb = page.locator('.st-key-span_range input[type="range"]').last
        for _ in range(options.repeats):  # each press moves the span's end one token right
            start, end = map(int, re.search(r"\(#(\d+)–#(\d+)\) is kept whole",
                                            page.locator(".st-key-span_view").text_content()).groups())
            report["span"].append(timed(page, ".st-key-span_view", lambda: thumb.press("ArrowRight"),
                                        rf"\(#{start}–#{end + 1}\) is kept whole"))
        page.screenshot(path=str(OUT / "span.png"), full_page=True)

        page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Walk").first.click()
        title = page.locator(".st-key-walk_step_view h3").first
        expect(title).to_have_text("Scores and the budget split", timeout=LONG)
        for button in ["walk_next"] * 8 + ["walk_back"] * 8:
            before = title.text_content()
            report["walk"].append(timed(page, ".st-key-walk_step_view h3",
                                        page.locator(f".st-key-{button} button").click, before=before))
            if button == "walk_next":
                page.screenshot(path=str(OUT / f"walk-{len(report['walk']) + 1}.png"), full_page=True)
        browser.close()
    report["summary"] = {view: summary(report[view]) for view in ("why", "span", "walk")}
    (OUT / "summary.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
