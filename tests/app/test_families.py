"""Every explorer page on the tiny random models of the families with sliding windows, soft-capping and a fused
projection: the views render their traces without errors, and a sliding layer shows its out-of-window tokens
as evicted."""

from __future__ import annotations

import pytest

from tests.app.helpers import no_errors
from tests.app.test_pages import PAGES


@pytest.mark.parametrize("model", ["random:tiny-gemma2", "random:tiny-mistral-sw", "random:tiny-phi3"])
def test_every_page_renders_for_the_family(app, monkeypatch, model):
    monkeypatch.setenv("KVCRUSH_APP_MODEL", model)
    at = app.run()
    no_errors(at)
    for page in PAGES[1:]:
        at.switch_page(page).run()
        no_errors(at)
    at.switch_page(PAGES[0]).run()
    no_errors(at)
