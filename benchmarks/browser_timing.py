"""Time the explorer in Chromium as a person sees it: budget steps, page switches, Walk steps (issue 23).

    PYTHONPATH=. .venv/bin/python -m benchmarks.browser_timing [--examples 2k long] [--steps 5] [--rounds 2]

For each built-in example (default: "Needle in essays (~2k tokens)" and the ~7.5k-token "Four needles in essays"),
it starts `streamlit run app.py` on the packaged SmolLM2 with the app's own defaults (50%, query-aware, 32 new
tokens; `tests.streamlit_server`), opens Chromium through Playwright and waits for the first run (the prefill).
Then it measures, each time from the input event's own timestamp in the page (`keydown` / `pointerdown`,
`performance.now()`):

- budget step: the budget slider one step down with the keyboard, until the Tokens page's kept count ("Layer 0,
  KV head 0: N of M tokens kept") shows the new number;
- page switch: a click on each page in the sidebar (Signatures, Groups, Walk, Attention, Compare, Sweep, Tokens),
  until that page's main content is on screen; the first visit of each page (which may fit a UMAP map or run the
  Compare page's policies) is reported apart from the later rounds;
- Walk step: a click on "Next", until the next step's title is on screen.

Three clocks per sample: `dom_s`, the first DOM mutation that shows the change (a MutationObserver, what
tests/app/measure_2k.py reports); `frame_s`, the first animation frame whose callback sees the change (polled on
every `requestAnimationFrame`: when the browser can actually paint it; the goals use this one); `settled_s`, the
first frame after that with the script finished and no stale element left (for a budget step: the new answer
complete). The table shows the median, minimum and maximum of `frame_s` with the medians of the other two; the
CSV holds every sample, the JSON the table, every sample and the settings. Results go to
benchmarks/results/browser_timing/.

Why tests/app/measure_2k.py reported 0.14-0.22 s where polling every frame saw 0.15-0.67 s (median 0.39 s)
on the same 2k example. Four differences, measured here where they can be:

1. The clock stops at a different moment. measure_2k's MutationObserver fires as a microtask right after React
   commits the new text, before the browser has run style, layout and paint, and before the rest of the same
   task. Streamlit applies a rerun's deltas in bursts: the kept count's markdown is committed in the same long
   task that re-renders the token view's HTML, the legend and the Plotly charts below (the status strip, the head
   grid, the span's fate maps), so the frame that shows the count comes only once that task ends. `frame_s -
   dom_s` below is that wait; it grows with what the page redraws, which is why the views are bounded in marks.
2. Load at the moment of the key press. measure_2k waits for the previous answer to finish and 1.5 s more
   before each press; a person (and a frame-polling measurement that presses while the last answer is still
   streaming) competes with the 32-token decode for the two shared cores, and Chromium's main thread with it.
   This script waits for the previous run to settle and 1 s more, like measure_2k, so its `frame_s` isolates
   point 1.
3. Settings. measure_2k starts the app at 25%, query-agnostic (`KVCRUSH_APP_BUDGET=25`,
   `KVCRUSH_APP_QUERY_AWARE=0`), where the first screen follows no gold answer by default; the app's own first
   screen is 50%, query-aware, with the needle followed, which adds the span's fate maps and the comparison
   policy's selection to every rerun. This script uses the app's defaults.
4. Where the clock starts. Both start at the page's own `keydown` timestamp; a measurement that starts from
   Python before `press()` adds the DevTools round trip (a few to tens of milliseconds).

The machine the numbers come from is usually shared (2 cores, other jobs): the JSON records the load average
before and after; treat absolute times as upper bounds and compare examples run together.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.streamlit_server import app_env, running_app  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "browser_timing"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG_MS = 900_000  # the first run of the long example on two busy cores (prefill, scoring, 32 tokens)
SETTLE_MS = 1_000  # after a run settles, a person reads before the next input
EXAMPLES = {"2k": "Needle in essays (~2k tokens)", "long": "Four needles in essays (~7.5k tokens)"}
# Page title -> the selector of its main content (a page counts as switched when it is shown, fresh).
PAGES = {
    "Signatures": ".st-key-signature_view .js-plotly-plot",
    "Groups": ".st-key-embedding_view .js-plotly-plot",
    "Walk": ".st-key-walk_step_view h3",
    "Attention": '[data-testid="stAlert"]',
    "Compare": ".st-key-cmp_col_snapkv",
    "Sweep": ".st-key-sweep_run",
    "Tokens": ".st-key-token_view span.kvt",
}
GOALS = {"budget step": 0.3, "page switch": 1.0, "Walk step": 1.0}

# Installed before each input. Records the input event's time, the first DOM mutation showing the change, the
# first animation frame that sees it, and the first frame after that with the script done and nothing stale.
WATCH = """([mode, before, selector, title]) => {
  const m = {mode};
  window.__m = m;
  const app = () => document.querySelector('[data-testid=stApp]');
  const state = () => (app() ? app().dataset.testScriptState : null);
  const fresh = (el) => !!el && !el.closest('[data-stale="true"]');
  const keptText = () => {
    const el = [...document.querySelectorAll('[data-testid=stMarkdownContainer]')]
      .find(e => /Layer \\d+, KV head \\d+: /.test(e.innerText));
    return el ? el.innerText : null;
  };
  const ready = () => {
    if (mode === 'kept') { const t = keptText(); return t !== null && t !== before; }
    if (mode === 'walk') {
      const el = document.querySelector('.st-key-walk_step_view h3');
      return fresh(el) && el.innerText !== before;
    }
    const heading = [...document.querySelectorAll('[data-testid=stMain] h1')]
      .find(h => fresh(h) && h.innerText.trim() === title);
    return !!heading && fresh(document.querySelector(selector));
  };
  const begin = () => { if (m.start === undefined) m.start = performance.now(); };
  document.addEventListener(mode === 'kept' ? 'keydown' : 'pointerdown', begin, {capture: true, once: true});
  if (window.__observer) window.__observer.disconnect();
  const observer = new MutationObserver(() => {
    if (m.start !== undefined && m.dom === undefined && ready()) m.dom = performance.now();
  });
  window.__observer = observer;
  observer.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  const frame = () => {
    const now = performance.now();
    if (m.start !== undefined) {
      if (m.frame === undefined && ready()) m.frame = now;
      if (m.frame !== undefined && m.settled === undefined && state() === 'notRunning'
          && !document.querySelector('[data-stale="true"]')) m.settled = now;
    }
    if (m.settled === undefined) requestAnimationFrame(frame); else observer.disconnect();
  };
  requestAnimationFrame(frame);
}"""
KEPT_TEXT = """() => {
  const el = [...document.querySelectorAll('[data-testid=stMarkdownContainer]')]
    .find(e => /Layer \\d+, KV head \\d+: /.test(e.innerText));
  return el ? el.innerText : null;
}"""
WALK_TITLE = "() => { const el = document.querySelector('.st-key-walk_step_view h3'); return el ? el.innerText : ''; }"
IDLE = "() => document.querySelector('[data-testid=stApp]').dataset.testScriptState === 'notRunning'"


def _marks(page, action) -> dict:
    """Run `action` (which presses or clicks) after WATCH is installed; wait until the change settled."""
    action()
    page.wait_for_function("() => window.__m && window.__m.settled !== undefined", timeout=LONG_MS)
    marks = page.evaluate("() => window.__m")
    start = marks["start"]
    return {key: round((marks[key] - start) / 1000, 3) for key in ("dom", "frame", "settled") if key in marks}


class Session:
    """One example in one browser page: the measurements and their samples."""

    def __init__(self, page, example: str) -> None:
        self.page = page
        self.example = example
        self.samples: list[dict] = []

    def record(self, measurement: str, marks: dict, **extra) -> None:
        row = {"example": self.example, "measurement": measurement, "dom_s": marks.get("dom"),
               "frame_s": marks.get("frame"), "settled_s": marks.get("settled"), **extra}
        self.samples.append(row)
        print(json.dumps(row), flush=True)
        self.page.wait_for_timeout(SETTLE_MS)

    def budget_steps(self, steps: int) -> None:
        page = self.page
        slider = page.locator('.st-key-budget_pct input[type="range"]')
        percent = int(slider.get_attribute("aria-valuenow") or slider.input_value())
        for _ in range(steps):
            percent -= 1
            before = page.evaluate(KEPT_TEXT)
            page.evaluate(WATCH, ["kept", before, "", ""])
            slider.focus()
            marks = _marks(page, lambda: slider.press("ArrowLeft"))
            page.locator(".st-key-run_summary").filter(has_text=f"at {percent}%").wait_for(timeout=LONG_MS)
            self.record("budget step", marks, budget=f"{percent}%")

    def switch(self, title: str, label: str) -> None:
        page = self.page
        page.evaluate(WATCH, ["page", None, PAGES[title], title])
        link = page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first
        marks = _marks(page, link.click)
        self.record(label, marks, page=title)

    def walk_steps(self, steps: int) -> None:
        page = self.page
        for index in range(steps):
            before = page.evaluate(WALK_TITLE)
            page.evaluate(WATCH, ["walk", before, "", ""])
            button = page.locator(".st-key-walk_next button")
            marks = _marks(page, button.click)
            self.record("Walk step", marks, step=index + 2, title=page.evaluate(WALK_TITLE))


def run_example(playwright, key: str, options) -> tuple[list[dict], dict]:
    example = EXAMPLES[key]
    env = app_env(KVCRUSH_APP_EXAMPLE=example)
    if options.max_new_tokens:
        env["KVCRUSH_APP_MAX_NEW_TOKENS"] = str(options.max_new_tokens)
    info: dict = {"example": example}
    with running_app(env, OUT / f"server-{key}.log", start_timeout_s=120) as url:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(LONG_MS)
        began = time.monotonic()
        page.goto(url)
        page.locator(".st-key-run_summary").filter(has_text=example).wait_for(timeout=LONG_MS)
        page.locator(".st-key-token_view span.kvt").first.wait_for(timeout=LONG_MS)
        page.wait_for_function(IDLE, timeout=LONG_MS)
        info["first_run_s"] = round(time.monotonic() - began, 1)
        info["first_summary"] = page.locator(".st-key-run_summary").inner_text()[:300]
        print(f"{example}: first run {info['first_run_s']} s", flush=True)
        page.wait_for_timeout(SETTLE_MS)
        session = Session(page, example)
        session.budget_steps(options.steps)
        for round_index in range(options.rounds + 1):
            for title in PAGES:
                label = "page switch (first visit)" if round_index == 0 and title != "Tokens" else "page switch"
                session.switch(title, label)
                if title == "Walk" and round_index == min(1, options.rounds):
                    session.walk_steps(options.walk_steps)
        page.screenshot(path=str(OUT / f"tokens-{key}.png"))
        browser.close()
    return session.samples, info


def summarize(samples: list[dict]) -> list[dict]:
    """One row per example and measurement (page switches also per page): n, median/min/max of frame_s, medians
    of dom_s and settled_s."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in samples:
        name = row["measurement"] + (f" → {row['page']}" if "page" in row else "")
        groups.setdefault((row["example"], name), []).append(row)
        if row["measurement"] == "page switch":
            groups.setdefault((row["example"], "page switch (all pages)"), []).append(row)
    table = []
    for (example, name), rows in groups.items():
        frames = [r["frame_s"] for r in rows if r["frame_s"] is not None]
        if not frames:
            continue
        goal = next((g for k, g in GOALS.items() if name.startswith(k) and "first visit" not in name), None)
        table.append({
            "example": example, "measurement": name, "n": len(frames),
            "median_s": round(statistics.median(frames), 3), "min_s": min(frames), "max_s": max(frames),
            "dom_median_s": round(statistics.median(r["dom_s"] for r in rows if r["dom_s"] is not None), 3)
            if any(r["dom_s"] is not None for r in rows) else None,
            "settled_median_s": round(statistics.median(r["settled_s"] for r in rows), 3),
            "goal_s": goal, "meets_goal": None if goal is None else statistics.median(frames) < goal,
        })
    return table


def print_table(table: list[dict]) -> None:
    header = ("example", "measurement", "n", "median_s", "min_s", "max_s", "dom_median_s", "settled_median_s",
              "goal_s")
    widths = {h: max(len(h), *(len(str(r[h])) for r in table)) for h in header}
    print("  ".join(h.ljust(widths[h]) for h in header))
    for row in table:
        print("  ".join(str(row[h]).ljust(widths[h]) for h in header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--steps", type=int, default=5, help="budget steps per example (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds over every page after the first visit")
    parser.add_argument("--walk-steps", type=int, default=8, help="Walk 'Next' clicks (default 8: all nine steps)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="answer length (default: the app's, 32)")
    options = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_before": [round(x, 2) for x in os.getloadavg()], "settle_ms": SETTLE_MS,
            "settings": "app defaults: 50% budget, query-aware, kvcrush over snapkv, 32 new tokens"
            if not options.max_new_tokens else f"app defaults, {options.max_new_tokens} new tokens",
            "examples": {}}
    samples: list[dict] = []
    with sync_playwright() as playwright:
        probe = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        meta["chromium"] = probe.version
        probe.close()
        for key in options.examples:
            rows, info = run_example(playwright, key, options)
            samples += rows
            meta["examples"][key] = info
    meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
    table = summarize(samples)
    print_table(table)
    with open(OUT / "samples.csv", "w", newline="") as handle:
        columns = ["example", "measurement", "page", "budget", "step", "title", "dom_s", "frame_s", "settled_s"]
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(samples)
    with open(OUT / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (OUT / "browser_timing.json").write_text(json.dumps({"meta": meta, "table": table, "samples": samples},
                                                        indent=2))
    print(f"wrote {OUT}/summary.csv, samples.csv, browser_timing.json", flush=True)


if __name__ == "__main__":
    main()
