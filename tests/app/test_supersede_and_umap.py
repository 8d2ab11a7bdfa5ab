"""A newer run supersedes an older one in the same session; the Groups page's real UMAP path."""

from __future__ import annotations

import pytest

from tests.app.helpers import chart, no_errors


def _superseded_script():
    import streamlit as st

    from ui import runs, state
    from ui.model import _load

    lm = _load("random:tiny", "cpu")
    st.session_state["lock"] = lm.lock
    prompt = state.PromptInput("text", "repeated text", "The quick brown fox jumps over the lazy dog. " * 60)
    request = state.RunRequest(state.ModelChoice("random:tiny", "cpu"), state.PolicyConfig(name="snapkv"), prompt,
                               4, False)
    original = runs.make_progress

    def newer_run_starts(bar, prefix, start=0.0, span=1.0):
        inner = original(bar, prefix, start, span)

        def progress(stage, done, total):
            inner(stage, done, total)
            if stage == "prefill" and done == 1:  # as if the user changed a widget mid-run
                state.run_control().current = "a newer run"

        return progress

    runs.make_progress = newer_run_starts
    try:
        runs.run_all(lm, [request])
        st.write("the old run finished")
    finally:
        runs.make_progress = original


def test_a_newer_run_supersedes_the_running_one():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_superseded_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("superseded" in info.value for info in at.info)
    assert not any("the old run finished" in m.value for m in at.markdown)
    assert len(at.session_state["_results"]) == 0  # a cancelled run stores nothing
    assert not at.session_state["lock"].locked()  # and gave the model back


@pytest.mark.slow
def test_groups_page_real_umap(app, monkeypatch):
    """umap-learn for real (first import compiles with numba: tens of seconds on 2 cores)."""
    monkeypatch.delenv("KVCRUSH_APP_PROJECTION")
    at = app.run()
    at.switch_page("pages/groups.py").run(timeout=240)
    no_errors(at)
    assert at.radio(key="grp_projection").value == "UMAP"
    figure = chart(at, "grp_map")
    assert figure["layout"]["title"]["text"] == "UMAP map of the signatures"
    assert any(caption.value.startswith("UMAP:") for caption in at.caption)
