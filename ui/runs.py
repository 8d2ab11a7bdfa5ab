"""Run orchestration: one prepared prompt per session, the selection first, the answer streamed after.

Every run goes through the session's prepared prompt (`ui.session_prompt`): a prompt is prefilled
once (`kvcrush.prepare`); after that a budget, policy or option change costs a selection
(`prepared.select`, milliseconds) and a decode (`prepared.generate`), never another prefill.

- Tokens, Signatures and Groups show one run: `current_run` returns a `LiveRun` as soon as its
  selection is ready (cached per session in `state.selections()`), the page renders the kept and
  evicted tokens from it, `begin_answer` starts decoding on a worker thread (`ui.answer`) while the
  rest of the page renders, and `finish` streams the answer into the page as it decodes.
- Compare and Sweep call `run_all`: every run of theirs shares the one prepared prompt.

Finished runs are cached in `state.results()`. Superseding: starting a run makes its id the
session's current one and `should_stop` compares, so a run still going in an older script thread of
the same session (a widget changed mid-run) stops at its next layer or token instead of holding the
model's lock.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

import kvcrush
from kvcrush.errors import KVCrushError
from kvcrush.trace import trace_on_host
from ui import answer, run_view, session_prompt
from ui import model as model_ui
from ui.answer import AnswerJob
from ui.state import AppConfig, PolicyConfig, RunRecord, RunRequest, results, run_control, selections

PREFILL_SHARE = 0.75  # share of a progress bar the prefill takes when a run needs one
HEAD_START_S = 1.0  # at most this long a page waits for the answer's first token before drawing its charts
LAST_PRIMARY = "_last_primary_key"

ShouldStop = Callable[[], bool]
Progress = Callable[[str, int, int], None]


def _progress_text(prefix: str, stage: str, done: int, total: int) -> str:
    if stage == "prefill":
        return f"{prefix}prefill layer {done}/{total} (once for this prompt)"
    return f"{prefix}decode token {done}/{total}"


def make_progress(bar, prefix: str, start: float = 0.0, span: float = 1.0) -> Progress:
    """A `progress(stage, done, total)` callback drawing one stage into one `st.progress`, between start
    and start+span."""

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(1.0, start + span * done / max(total, 1)), text=_progress_text(prefix, stage, done, total))

    return progress


def _start() -> ShouldStop:
    """Make a new run this session's current one; the returned check turns true once a newer run starts."""
    control = run_control()
    run_id = uuid.uuid4().hex
    control.current = run_id
    return lambda: control.current != run_id


def _show_failure(target, request: RunRequest, error: KVCrushError) -> None:
    """Show why a run failed in `target` (the page or a slot). Out of memory (or a failed GPU): the session's
    prepared prompt, the largest thing it holds on the device, is released so the next run finds the memory."""
    if isinstance(error, kvcrush.ResourceError):
        session_prompt.release()
    target.error(f"{request.policy.label} at {request.policy.budget_text}: {error}")


def _prepare(lm: kvcrush.LoadedModel, request: RunRequest, bar, prefix: str, span: float,
             should_stop: ShouldStop) -> kvcrush.PreparedPrompt:
    """The session's prepared prompt for `request`, prefilling (progress in `bar`) only when it has none."""
    found = session_prompt.current(lm, request.prompt_key)
    if found is not None:
        return found
    if lm.lock.locked():
        bar.progress(0.0, text=f"{prefix}waiting for another session's run to finish…")
    return session_prompt.obtain(lm, request, make_progress(bar, prefix, 0.0, span), should_stop)


def select(lm: kvcrush.LoadedModel, prepared: kvcrush.PreparedPrompt, request: RunRequest,
           should_stop: ShouldStop, force: bool = False) -> kvcrush.RunTrace:
    """The kept tokens of `request` (no decoding), from the session's selection cache or `prepared.select`."""
    store = selections()
    trace = None if force else store.get(request.selection_key)
    if trace is None:
        policy = request.policy.build()
        model_ui.preflight(lm, len(prepared.encoded.all_ids), request.max_new_tokens, policy, prepared)
        trace = trace_on_host(prepared.select(policy, should_stop))
        store.set(request.selection_key, trace)
    return trace


def execute(prepared: kvcrush.PreparedPrompt, request: RunRequest, progress: Progress | None,
            should_stop: ShouldStop, began: float | None = None) -> RunRecord:
    """Decode `request` from the prepared prompt in this thread and store the finished run."""
    began = time.perf_counter() if began is None else began
    return answer.generate(prepared, request, should_stop, began, results(), selections(), progress)


def _superseded(bar=None) -> None:
    if bar is not None:
        bar.empty()
    st.info("This run was superseded by a newer one.")
    st.stop()


def run_all(lm: kvcrush.LoadedModel, requests: list[RunRequest], force: bool = False,
            what: str = "", supersede: bool = True) -> list[RunRecord] | None:
    """Results for several requests, computing the missing ones under one progress bar (one prefill at most).

    Returns None (after showing the error) when a run fails; stops the script when superseded.
    `supersede=False` runs them beside the session's current run instead of replacing it (a side run the
    page needs, e.g. the full cache's answer for a span, while the page's own answer decodes).
    """
    store = results()
    if force:
        for request in requests:
            store.drop(request.key)
            selections().drop(request.selection_key)
    done = {r.key: store.get(r.key) for r in requests}
    missing = list({r.key: r for r in requests if done[r.key] is None}.values())
    if missing:
        should_stop = _start() if supersede else (lambda: False)
        bar = st.progress(0.0, text=f"{what}starting…")
        share = PREFILL_SHARE if any(session_prompt.current(lm, r.prompt_key) is None for r in missing) else 0.0
        request = missing[0]
        try:
            for i, request in enumerate(missing):
                began = time.perf_counter()
                prepared = _prepare(lm, request, bar, what, share, should_stop)
                prefix = f"{what}run {i + 1}/{len(missing)} · {request.policy.label} · " if len(missing) > 1 \
                    else f"{what}{request.policy.label} · "
                span = (1 - share) / len(missing)
                progress = make_progress(bar, prefix, share + span * i, span)
                done[request.key] = execute(prepared, request, progress, should_stop, began=began)
        except kvcrush.RunCancelled:
            _superseded(bar)
        except KVCrushError as error:
            bar.empty()
            _show_failure(st, request, error)
            return None
        bar.empty()
    return [done[r.key] for r in requests]  # type: ignore[misc]


@dataclass
class LiveRun:
    """The run a single-run page shows: its selection now, its answer finished (`record`) or to decode.

    `prepared` is None when the selection came from the cache and the session holds another prompt;
    `finish` prefills then.
    """

    request: RunRequest
    trace: kvcrush.RunTrace
    record: RunRecord | None = None
    prepared: kvcrush.PreparedPrompt | None = None
    should_stop: ShouldStop | None = None
    began: float = 0.0
    selected_s: float = 0.0  # seconds from the start of this run until its selection was ready
    job: AnswerJob | None = None  # the answer decoding in the background (`begin_answer`)

    def latest(self) -> kvcrush.GenerationResult | kvcrush.RunTrace:
        """The finished result when there is one (downloads ask when clicked), else the selection."""
        return self.record.result if self.record is not None else self.trace


def _start_run(lm: kvcrush.LoadedModel, request: RunRequest, force: bool) -> LiveRun | None:
    """Prefill if the session has no prepared prompt for this request, select, and start the answer.

    The selection is made once, here, and handed to the answer's worker thread
    (`PreparedPrompt.generate(selection=...)`), which gathers the kept rows and decodes from it.
    """
    should_stop = _start()
    began = time.perf_counter()
    label = f"{request.policy.label} · "
    bar = None
    try:
        request.policy.build()  # bad settings fail here, before any prefill
        prepared = session_prompt.current(lm, request.prompt_key)
        trace = None if force else selections().get(request.selection_key)
        if trace is None and prepared is None:
            bar = st.progress(0.0, text=f"{label}starting…")
            prepared = _prepare(lm, request, bar, label, 1.0, should_stop)
        if trace is None:
            trace = select(lm, prepared, request, should_stop, force)
    except kvcrush.RunCancelled:
        _superseded(bar)
    except KVCrushError as error:
        if bar is not None:
            bar.empty()
        _show_failure(st, request, error)
        return None
    if bar is not None:
        bar.empty()
    live = LiveRun(request, trace, None, prepared, should_stop, began, time.perf_counter() - began)
    begin_answer(live)
    return live


def current_run(config: AppConfig, lm: kvcrush.LoadedModel) -> LiveRun | None:
    """The run for the sidebar's settings: finished (cached), selected now and decoded by `finish`
    (auto-run or the Run button), or the previous one with a note when auto-run is off."""
    if config.prompt is None:
        st.info(config.prompt_error or "Choose a prompt in the sidebar.")
        return None
    request = RunRequest.from_config(config)
    flag = config.run_request
    store = results()
    if flag == "force":
        store.drop(request.key)
    cached = store.get(request.key)
    if cached is not None:
        st.session_state[LAST_PRIMARY] = request.key
        return LiveRun(request, cached.result.trace, cached)
    if config.options.auto_run or flag:
        return _start_run(lm, request, force=flag == "force")
    previous = store.get(st.session_state.get(LAST_PRIMARY, ""))
    if previous is not None:
        st.warning("The settings changed: showing the previous run. Press **Run** in the sidebar to update.")
        return LiveRun(previous.request, previous.result.trace, previous)
    st.info("Press **Run** in the sidebar to compute a trace for these settings.")
    return None


def _answer_job(prepared: kvcrush.PreparedPrompt, request: RunRequest, should_stop: ShouldStop,
                began: float, selection: kvcrush.RunTrace) -> AnswerJob:
    return AnswerJob(prepared, request, should_stop, began, results(), selections(), selection)


def begin_answer(live: LiveRun, head_start_s: float = 0.0) -> None:
    """Start decoding the live run's answer on a worker thread (no-op when finished or started).

    `head_start_s`: wait up to this long for its first token. Before that the job gathers the kept rows
    and appends the question, Python-heavy steps that the page's chart building (which holds the GIL)
    would slow down; a page passes `HEAD_START_S` after its light, main view and before its charts.
    """
    if live.record is not None or live.prepared is None:
        return
    if live.job is None:
        live.job = _answer_job(live.prepared, live.request, live.should_stop or _start(), live.began, live.trace)
    if head_start_s > 0:
        live.job.wait(0, timeout=head_start_s)


def finish(lm: kvcrush.LoadedModel, live: LiveRun, slots: run_view.RunSlots,
           answers: tuple[str, ...] = ()) -> RunRecord | None:
    """Stream the live run's answer into `slots` as it decodes, then show the finished run's summary.

    Called last by a single-run page. A finished run only needs its slots, already filled.
    """
    if live.record is not None:
        return live.record
    request = live.request
    try:
        if live.prepared is None:  # the selection came from the cache, the session holds another prompt
            should_stop = live.should_stop or _start()
            bar = slots.answer.progress(0.0, text="starting…")
            live.prepared = _prepare(lm, request, bar, f"{request.policy.label} · ", 1.0, should_stop)
        begin_answer(live)
        job = live.job
        assert job is not None
        decode = live.prepared.lm.tokenizer.decode
        shown = -1
        try:
            while True:
                ids, done = job.wait(shown, timeout=0.25)
                if len(ids) != shown:
                    run_view.streaming(slots, request, decode(ids, skip_special_tokens=True), len(ids))
                    shown = len(ids)
                if done:
                    break
        except BaseException:
            job.cancel()  # Streamlit stopped this script (a newer run, a closed tab): stop decoding too
            raise
        if job.error is not None:
            raise job.error
    except kvcrush.RunCancelled:
        slots.answer.info("This run was superseded by a newer one.")
        return None
    except KVCrushError as error:
        _show_failure(slots.answer, request, error)
        return None
    record = job.record
    live.record = record
    st.session_state[LAST_PRIMARY] = request.key
    run_view.fill(slots, record, answers)
    return record


def other_selection(lm: kvcrush.LoadedModel, live: LiveRun, policy: PolicyConfig) -> kvcrush.RunTrace | None:
    """The kept tokens of another policy on the live run's prompt (no decoding), from the session's selection
    cache or its prepared prompt; None when the session holds no prepared prompt for it or it fails.

    Never starts a new run: the live run's answer keeps decoding meanwhile.
    """
    request = dataclasses.replace(live.request, policy=policy.normalized())
    trace = selections().get(request.selection_key)
    if trace is not None:
        return trace
    prepared = live.prepared or session_prompt.current(lm, request.prompt_key)
    if prepared is None:
        return None
    try:
        return select(lm, prepared, request, lambda: False)
    except KVCrushError:
        return None


def reference_run(config: AppConfig, lm: kvcrush.LoadedModel, force: bool = False,
                  supersede: bool = True) -> RunRecord | None:
    """The full-cache run for the current prompt (what other policies are compared with)."""
    request = RunRequest.from_config(config, config.policy.with_name("full"))
    records = run_all(lm, [request], force=force, what="full cache · ", supersede=supersede)
    return records[0] if records else None
