"""Fixtures for the app tests: AppTest on the tiny random model, and a real Streamlit server + Chromium.

AppTest runs the real app.py in-process with `KVCRUSH_APP_MODEL=random:tiny` (2 layers, 4 query
heads, 2 KV heads, the packaged tokenizer) and PCA maps, so every page renders in about a second.
The browser test starts `streamlit run app.py` on the packaged SmolLM2 and drives it with Debian's
Chromium through pytest-playwright (`browser_type_launch_args` is overridden here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
APP_TIMEOUT = 90  # seconds per AppTest run (the first one loads the tiny model and builds examples)


@pytest.fixture(autouse=True)
def _navigation_pages_manager(monkeypatch):
    """Work around AppTest (Streamlit 1.67) rerunning a page file directly when a pages/ folder exists.

    Before every run AppTest resets `PagesManager.uses_pages_directory` to None and builds a fresh
    PagesManager, which sets it to True because app.py has a pages/ folder next to it; from the second
    run on AppTest then runs the page file alone (Streamlit's legacy pages/ mode), without app.py and its
    sidebar. A real server calls `st.navigation` in the first run, which sets the flag to False for good.
    This keeps it False in tests, as `st.navigation` would.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import app_test

    class NavigationPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)


@pytest.fixture(autouse=True)
def _tiny_app_env(monkeypatch):
    monkeypatch.setenv("KVCRUSH_APP_MODEL", "random:tiny")
    monkeypatch.setenv("KVCRUSH_APP_PROJECTION", "pca")
    monkeypatch.setenv("KVCRUSH_APP_MAX_NEW_TOKENS", "4")
    monkeypatch.delenv("KVCRUSH_APP_EXAMPLE", raising=False)


@pytest.fixture
def app():
    """A fresh AppTest session of app.py (not yet run)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT)


# --- browser test fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright: Debian's Chromium, headless, no network side channels."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1500, "height": 1000}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def streamlit_server():
    """`streamlit run app.py` on the packaged model; yields its base URL; stopped by PID afterwards."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCRUSH_APP_")}
    env.update(PYTHONPATH=str(ROOT), KVCRUSH_APP_MAX_NEW_TOKENS="8", PYTHONUNBUFFERED="1")
    if os.environ.get("KVCRUSH_BROWSER_TEST_MODEL"):  # a quicker model while developing the test
        env["KVCRUSH_APP_MODEL"] = os.environ["KVCRUSH_BROWSER_TEST_MODEL"]
    log = open(ARTIFACTS / "streamlit-server.log", "w")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port",
         str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {ARTIFACTS / 'streamlit-server.log'}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
