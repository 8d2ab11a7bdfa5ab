"""Fixtures for the app tests: AppTest on the tiny random model, and a real Streamlit server + Chromium.

AppTest runs the real app.py in-process with `KVCRUSH_APP_MODEL=random:tiny` (2 layers, 4 query
heads, 2 KV heads, the packaged tokenizer) and PCA maps, so every page renders in about a second.
The browser test starts `streamlit run app.py` on the packaged SmolLM2 and drives it with Debian's
Chromium through pytest-playwright (`browser_type_launch_args` is overridden here).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.streamlit_server import app_env, running_app

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


# The settings most app tests were written for (the 1k needle, 25%, query-agnostic: SnapKV's 32-token window
# is the recent window); the first screen's own defaults are tested in test_explain_pages.
EARLIER_DEFAULTS = {"KVCRUSH_APP_EXAMPLE": "Needle in essays (~1k tokens)", "KVCRUSH_APP_BUDGET": "25",
                    "KVCRUSH_APP_QUERY_AWARE": "0"}


@pytest.fixture(autouse=True)
def _tiny_app_env(monkeypatch):
    monkeypatch.setenv("KVCRUSH_APP_MODEL", "random:tiny")
    monkeypatch.setenv("KVCRUSH_APP_PROJECTION", "pca")
    monkeypatch.setenv("KVCRUSH_APP_MAX_NEW_TOKENS", "4")
    for name, value in EARLIER_DEFAULTS.items():
        monkeypatch.setenv(name, value)


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


@pytest.fixture(scope="module")
def streamlit_server():
    """`streamlit run app.py` on the packaged model; yields its base URL; stopped by PID afterwards."""
    env = app_env(KVCRUSH_APP_MAX_NEW_TOKENS="8")
    if os.environ.get("KVCRUSH_BROWSER_TEST_MODEL"):  # a quicker model while developing the test
        env["KVCRUSH_APP_MODEL"] = os.environ["KVCRUSH_BROWSER_TEST_MODEL"]
    with running_app(env, ARTIFACTS / "streamlit-server.log") as url:
        yield url
