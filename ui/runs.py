"""Run orchestration: progress bars, per-session caching and superseding of older runs.

Every run goes through `execute`, which calls `kvcrush.generate` with a progress callback (stage
names 'prefill + scoring layer i/n' and 'decode token j/k') and a `should_stop` that compares the
run's id with the session's current one. Starting a run makes it the current one, so a run still
going in an older script thread of the same session (a widget changed mid-run) stops at its next
layer or token instead of holding the model's lock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import fields

import streamlit as st
import torch

import kvcrush
from kvcrush.errors import KVCrushError
from ui import model as model_ui
from ui.state import AppConfig, RunRecord, RunRequest, results, run_control

PREFILL_SHARE = 0.75  # share of the bar the prefill (with scoring and selection) takes
LAST_PRIMARY = "_last_primary_key"


def _progress_text(prefix: str, stage: str, done: int, total: int) -> str:
    if stage == "prefill":
        return f"{prefix}prefill + scoring layer {done}/{total}"
    return f"{prefix}decode token {done}/{total}"


def make_progress(bar, prefix: str, start: float = 0.0, span: float = 1.0) -> Callable[[str, int, int], None]:
    """A `progress(stage, done, total)` callback drawing into one `st.progress` between start and start+span."""

    def progress(stage: str, done: int, total: int) -> None:
        share = PREFILL_SHARE * done / max(total, 1) if stage == "prefill" else \
            PREFILL_SHARE + (1 - PREFILL_SHARE) * done / max(total, 1)
        bar.progress(min(1.0, start + span * share), text=_progress_text(prefix, stage, done, total))

    return progress


def traces_on_cpu(result: kvcrush.GenerationResult) -> kvcrush.GenerationResult:
    """Move every tensor of the trace to the CPU (a CUDA run leaves some there), so pages can use numpy and
    session state holds no GPU memory."""
    for layer in result.trace.layers:
        for item in fields(layer):
            value = getattr(layer, item.name)
            if isinstance(value, torch.Tensor):
                setattr(layer, item.name, value.detach().cpu())
            elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                setattr(layer, item.name, [v.detach().cpu() for v in value])
    return result


def execute(lm: kvcrush.LoadedModel, request: RunRequest, bar=None, prefix: str = "",
            start: float = 0.0, span: float = 1.0) -> RunRecord:
    """Run one request now (superseding this session's older runs) and store its result.

    Raises `KVCrushError` for bad settings or prompts and `kvcrush.RunCancelled` when superseded.
    """
    control = run_control()
    run_id = uuid.uuid4().hex
    control.current = run_id
    own_bar = bar is None
    if own_bar:
        bar = st.progress(0.0, text=f"{prefix}starting…")
    if lm.lock.locked():
        bar.progress(start, text=f"{prefix}waiting for another session's run to finish…")
    policy = request.policy.build()
    n_context, n_tail = model_ui.count_tokens(lm, request.prompt.context, request.prompt.question)
    model_ui.preflight(lm, n_context + n_tail, request.max_new_tokens, policy)
    began = time.perf_counter()
    result = kvcrush.generate(
        lm, request.prompt.context, policy, max_new_tokens=request.max_new_tokens,
        question=request.prompt.question, query_aware=request.query_aware,
        reference_ids=list(request.reference_ids) or None,
        progress=make_progress(bar, prefix, start, span),
        should_stop=lambda: control.current != run_id,
    )
    record = RunRecord(request, traces_on_cpu(result), time.perf_counter() - began)
    results().put(record)
    if own_bar:
        bar.empty()
    return record


def run_all(lm: kvcrush.LoadedModel, requests: list[RunRequest], force: bool = False,
            what: str = "") -> list[RunRecord] | None:
    """Results for several requests, computing the missing ones under one progress bar.

    Returns None (after showing the error) when a run fails; stops the script when superseded.
    """
    store = results()
    if force:
        for request in requests:
            store.drop(request.key)
    done = {r.key: store.get(r.key) for r in requests}
    missing = list({r.key: r for r in requests if done[r.key] is None}.values())
    if missing:
        bar = st.progress(0.0, text="starting…")
        request = missing[0]
        try:
            for i, request in enumerate(missing):
                prefix = f"{what}run {i + 1}/{len(missing)} · {request.policy.label} · " if len(missing) > 1 \
                    else f"{what}{request.policy.label} · "
                done[request.key] = execute(lm, request, bar, prefix, start=i / len(missing), span=1 / len(missing))
        except kvcrush.RunCancelled:
            bar.empty()
            st.info("This run was superseded by a newer one.")
            st.stop()
        except KVCrushError as error:
            bar.empty()
            st.error(f"{request.policy.label} at {request.policy.budget_text}: {error}")
            return None
        bar.empty()
    return [done[r.key] for r in requests]  # type: ignore[misc]


def current_run(config: AppConfig, lm: kvcrush.LoadedModel) -> RunRecord | None:
    """The run for the sidebar's settings: cached, computed now (auto-run or the Run button), or the
    previous one with a note when auto-run is off."""
    if config.prompt is None:
        st.info(config.prompt_error or "Choose a prompt in the sidebar.")
        return None
    request = RunRequest.from_config(config)
    flag = config.run_request
    store = results()
    cached = None if flag == "force" else store.get(request.key)
    if cached is not None:
        st.session_state[LAST_PRIMARY] = request.key
        return cached
    if config.options.auto_run or flag:
        records = run_all(lm, [request], force=flag == "force")
        if records:
            st.session_state[LAST_PRIMARY] = request.key
            return records[0]
        return None
    previous = store.get(st.session_state.get(LAST_PRIMARY, ""))
    if previous is not None:
        st.warning("The settings changed: showing the previous run. Press **Run** in the sidebar to update.")
        return previous
    st.info("Press **Run** in the sidebar to compute a trace for these settings.")
    return None


def reference_run(config: AppConfig, lm: kvcrush.LoadedModel, force: bool = False) -> RunRecord | None:
    """The full-cache run for the current prompt (what other policies are compared with)."""
    request = RunRequest.from_config(config, config.policy.with_name("full"))
    records = run_all(lm, [request], force=force, what="full cache · ")
    return records[0] if records else None
