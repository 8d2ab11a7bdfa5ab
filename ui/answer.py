"""A run's answer, decoded in a worker thread while the script thread renders the page and streams it.

After a budget change the page's views come from the selection alone; decoding the answer
(`prepared.generate`: a gather of the full cache, the question appended, then greedy tokens) takes
seconds. Starting it as soon as the selection is shown, on a thread of its own, lets the page draw
its charts meanwhile instead of before it; the script thread then only copies the tokens decoded so
far into the answer box (`AnswerJob.wait`). Streamlit calls stay in the script thread: the worker
only runs the engine and stores the finished run in the session's stores (objects handed to it, not
`st.session_state`, which needs the script's context).

Stopping: the job stops at its next token when the session starts a newer run (`superseded`) or
when the script thread that waits for it goes away (`cancel`, called when Streamlit stops the script).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import kvcrush
from kvcrush.attention_use import AttentionRecorder
from kvcrush.trace import trace_on_host
from ui.state import ResultStore, RunRecord, RunRequest, SelectionStore


def generate(prepared: kvcrush.PreparedPrompt, request: RunRequest, should_stop: Callable[[], bool], began: float,
             results: ResultStore, selections: SelectionStore,
             progress: Callable[[str, int, int], None] | None = None,
             on_token: Callable[[list[int]], None] | None = None,
             selection: kvcrush.RunTrace | None = None) -> RunRecord:
    """Decode `request` from the prepared prompt and store the finished run (`began`: when the run started).

    `selection`: the trace `prepared.select` already gave for this request, reused instead of selecting again.
    """
    recorder = AttentionRecorder() if request.record_attention else None
    result = prepared.generate(request.policy.build(), request.max_new_tokens,
                               reference_ids=list(request.reference_ids) or None, progress=progress,
                               should_stop=should_stop, on_token=on_token, selection=selection, observer=recorder)
    trace_on_host(result.trace)
    record = RunRecord(request, result, time.perf_counter() - began,
                       attention=recorder.result if recorder is not None else None)
    results.put(record)
    selections.set(request.selection_key, result.trace)
    return record


class AnswerJob:
    """`prepared.generate(request)` on a worker thread; `ids` grows as tokens are decoded."""

    def __init__(self, prepared: kvcrush.PreparedPrompt, request: RunRequest, superseded: Callable[[], bool],
                 began: float, results: ResultStore, selections: SelectionStore,
                 selection: kvcrush.RunTrace | None = None) -> None:
        self.prepared = prepared
        self.selection = selection
        self.request = request
        self.began = began
        self.ids: list[int] = []
        self.record: RunRecord | None = None
        self.error: BaseException | None = None
        self.done = False
        self._superseded = superseded
        self._cancelled = threading.Event()
        self._changed = threading.Condition()
        self._stores = (results, selections)
        self._thread = threading.Thread(target=self._run, name="kvcrush-answer", daemon=True)
        self._thread.start()

    def should_stop(self) -> bool:
        return self._cancelled.is_set() or self._superseded()

    def cancel(self) -> None:
        self._cancelled.set()

    def _on_token(self, ids: list[int]) -> None:
        with self._changed:
            self.ids = list(ids)
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self.record = generate(self.prepared, self.request, self.should_stop, self.began, *self._stores,
                                   on_token=self._on_token, selection=self.selection)
        except BaseException as error:  # handed to the script thread, which shows it
            self.error = error
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> tuple[list[int], bool]:
        """The tokens so far and whether the job ended, once there are more than `seen` or it ended."""
        with self._changed:
            self._changed.wait_for(lambda: self.done or len(self.ids) != seen, timeout)
            return list(self.ids), self.done
