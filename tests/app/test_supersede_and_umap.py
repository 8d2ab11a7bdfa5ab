"""A newer run supersedes an older one in the same session (in its prefill or its decode); real UMAP."""

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


def _superseded_while_decoding_script():
    import dataclasses

    import streamlit as st

    from ui import run_view, runs, state
    from ui.model import _load

    lm = _load("random:tiny", "cpu")
    prompt = state.PromptInput("text", "repeated text", "The quick brown fox jumps over the lazy dog. " * 60)
    config = state.AppConfig(state.ModelChoice("random:tiny", "cpu"), state.PolicyConfig(name="snapkv"), prompt,
                             state.RunOptions(max_new_tokens=4))
    first = runs.current_run(config, lm)
    runs.finish(lm, first, run_view.RunSlots(st.empty(), st.empty()))  # finished: the prefill and scores exist
    config = dataclasses.replace(config, policy=config.policy.with_budget(0.5))
    with lm.lock:  # the new answer's job starts but waits for the model until the newer run has begun
        live = runs.current_run(config, lm)
        slots = run_view.run_header(live)
        st.write(f"selection shown: {live.trace.layers[0].kept.shape[1]} tokens kept")
        state.run_control().current = "a newer run"  # a widget changed while the page rendered the selection
    runs.finish(lm, live, slots)


def test_a_newer_run_supersedes_one_that_is_decoding():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_superseded_while_decoding_script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.value.startswith("selection shown") for m in at.markdown)  # the kept tokens came first
    assert any("superseded" in info.value for info in at.info)
    assert len(at.session_state["_results"]) == 1 and len(at.session_state["_selections"]) == 2
    assert at.session_state["_prepared"].prepared.prefills == 1  # kept for the newer run


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
