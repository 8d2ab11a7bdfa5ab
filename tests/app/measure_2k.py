"""Time the app on the ~2,000-token built-in example with the packaged model, in Chromium (not a test).

    PYTHONPATH=. .venv/bin/python tests/app/measure_2k.py

Starts `streamlit run app.py`, picks "Needle in essays (~2k tokens)", and reports seconds until the
Tokens page shows the first run, a re-run at a new budget, and each other page's content (Groups fits
UMAP, Compare runs snapkv and the full cache, Sweep runs one policy at one budget). Screenshots and a
JSON summary go to test-artifacts/measure-2k/.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-artifacts" / "measure-2k"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG = 600_000


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCRUSH_APP_")}
    env.update(PYTHONPATH=str(ROOT), KVCRUSH_APP_EXAMPLE="Needle in essays (~2k tokens)")
    log = open(OUT / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                               "true", "--server.port", str(port)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    times: dict[str, float] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(LONG)
            summary = page.locator(".st-key-run_summary")

            def timed(name, action, check):
                start = time.monotonic()
                action()
                check()
                times[name] = round(time.monotonic() - start, 1)
                page.screenshot(path=str(OUT / f"{name}.png"))
                print(f"{name}: {times[name]} s", flush=True)

            def nav(title):
                return lambda: page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()

            timed("first_run_25pct", lambda: page.goto(url),
                  lambda: expect(summary).to_contain_text("Needle in essays (~2k tokens)", timeout=LONG))
            slider = page.locator('.st-key-budget_pct input[type="range"]')

            def lower_budget():
                slider.focus()
                for _ in range(15):
                    slider.press("ArrowLeft")

            timed("rerun_10pct", lower_budget, lambda: expect(summary).to_contain_text("at 10%", timeout=LONG))
            timed("signatures", nav("Signatures"),
                  lambda: page.locator(".st-key-signature_view .js-plotly-plot").wait_for())
            timed("groups_umap", nav("Groups"),
                  lambda: expect(page.locator(".st-key-embedding_view")).to_contain_text("UMAP map", timeout=LONG))
            timed("compare_kvcrush_snapkv_full", nav("Compare"),
                  lambda: page.locator(".st-key-cmp_col_snapkv").wait_for())

            def sweep():
                nav("Sweep")()
                page.locator(".st-key-sweep_run").wait_for()
                for key, removals in (("sweep_policies", 1), ("sweep_budgets", 2)):  # keep kvcrush at 10 %
                    box = page.locator(f".st-key-{key} input")
                    box.click()
                    for _ in range(removals):
                        box.press("Backspace")
                    page.keyboard.press("Escape")
                    page.wait_for_timeout(1500)
                page.locator(".st-key-sweep_run button").click()

            timed("sweep_1x1", sweep, lambda: page.locator(".st-key-sweep_view .js-plotly-plot").wait_for())
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
    (OUT / "times.json").write_text(json.dumps(times, indent=2))


if __name__ == "__main__":
    main()
