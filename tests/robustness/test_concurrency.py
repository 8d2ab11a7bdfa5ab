"""One loaded model shared by several threads: results never mix, generations never overlap, runs can stop.

This is what the Streamlit app does (one cached `LoadedModel`, one script thread per browser session),
tested here at the library level; the browser load test drives the real app.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

import kvcrush
from kvcrush.generate import RunCancelled

PROMPTS = [
    "The history of the lighthouse at the edge of the bay begins with a storm in 1821. " * 6,
    "Recipe notes: flour, water, salt and a long slow rise give the bread its open crumb. " * 6,
    "In the quarterly report the committee found that spending on parks had doubled. " * 6,
    "The comet returns every seventy-six years; the next perihelion is expected in 2061. " * 6,
    "Chess openings: the Sicilian defence answers 1.e4 with c5 and fights for d4 at once. " * 6,
]
POLICIES = [
    dict(name="kvcrush", budget=0.5, base="snapkv"),
    dict(name="h2o", budget=24),
    dict(name="kvcrush", budget=0.6, base="h2o", granularity="block", block_size=4, anchor="mean"),
    dict(name="tova", budget=0.3),
    dict(name="kvcrush", budget=0.4, base="random", crush_fraction=0.5, anchor="random", seed=7),
]
NEW_TOKENS = 12


def _policy(spec: dict):
    spec = dict(spec)
    return kvcrush.make_policy(spec.pop("name"), **spec)


def _summary(result) -> dict:
    return {
        "text": result.text,
        "ids": list(result.new_token_ids),
        "kept": [layer.kept.tolist() for layer in result.trace.layers],
        "representatives": [None if layer.representatives is None else layer.representatives.tolist()
                            for layer in result.trace.layers],
        "bytes": (result.kv_bytes_before, result.kv_bytes_after),
        "tokens": result.trace.token_strings,
    }


class _ForwardCounter:
    """Counts model forwards running at the same moment (hooks on the top-level module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.active = 0
        self.most = 0
        self.calls = 0
        self._guard = threading.Lock()
        self._handles = [model.register_forward_pre_hook(self._enter), model.register_forward_hook(self._leave)]

    def _enter(self, module, args):
        with self._guard:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)

    def _leave(self, module, args, output):
        with self._guard:
            self.active -= 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def test_five_threads_share_one_model_without_mixing_or_overlapping(tiny_lm):
    alone = [_summary(kvcrush.generate(tiny_lm, p, _policy(s), max_new_tokens=NEW_TOKENS))
             for p, s in zip(PROMPTS, POLICIES, strict=True)]
    assert len({str(a["kept"]) for a in alone}) == len(alone), "the five runs must differ to detect mixing"

    barrier = threading.Barrier(len(PROMPTS))
    results: list[dict | None] = [None] * len(PROMPTS)
    errors: list[BaseException] = []
    spans: list[list[float]] = [[] for _ in PROMPTS]

    def worker(index: int) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            if stage == "prefill":
                spans[index].append(time.perf_counter())

        try:
            barrier.wait(timeout=30)
            result = kvcrush.generate(tiny_lm, PROMPTS[index], _policy(POLICIES[index]),
                                      max_new_tokens=NEW_TOKENS, progress=progress)
            results[index] = _summary(result)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    counter = _ForwardCounter(tiny_lm.model)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        counter.remove()

    assert not errors, errors
    for index, (got, expected) in enumerate(zip(results, alone, strict=True)):
        assert got == expected, f"session {index} saw a different result than the same run alone"
    assert counter.most == 1, "two forwards ran on the model at the same time"
    assert counter.calls > len(PROMPTS)
    intervals = sorted((min(s), max(s)) for s in spans)
    # A run holds the lock for its prefill and again for its decoding (selection in between needs no
    # model forward), so other runs may interleave between those phases but never inside a prefill.
    for (_, previous_end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
        assert next_start >= previous_end, "prefills overlapped: the lock did not serialise them"
    assert not tiny_lm.lock.locked()


def test_should_stop_cancels_a_run_and_releases_the_model(tiny_lm):
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(RunCancelled, match="The run was cancelled."):
        kvcrush.generate(tiny_lm, PROMPTS[0], _policy(POLICIES[0]), max_new_tokens=200,
                         should_stop=stop_after_three)
    assert calls["n"] == 4
    assert not tiny_lm.lock.locked()
    again = kvcrush.generate(tiny_lm, PROMPTS[0], _policy(POLICIES[0]), max_new_tokens=NEW_TOKENS)
    assert again.new_token_ids


def test_a_new_run_supersedes_the_one_in_progress(tiny_lm):
    """The pattern the app uses: each session's latest request wins; the older run stops at its next check."""
    expected = _summary(kvcrush.generate(tiny_lm, PROMPTS[1], _policy(POLICIES[1]), max_new_tokens=NEW_TOKENS))
    latest = {"id": 0}
    started = threading.Event()
    outcome: dict[str, object] = {}

    def run(run_id: int, prompt: str, spec: dict, new_tokens: int) -> None:
        latest["id"] = run_id

        def superseded() -> bool:
            started.set()
            return latest["id"] != run_id

        try:
            result = kvcrush.generate(tiny_lm, prompt, _policy(spec), max_new_tokens=new_tokens,
                                      should_stop=superseded)
            outcome[run_id] = _summary(result)
        except RunCancelled as error:
            outcome[run_id] = error
            outcome[f"{run_id}-stopped"] = time.perf_counter()

    first = threading.Thread(target=run, args=(1, PROMPTS[0] * 4, POLICIES[0], 4000))
    first.start()
    assert started.wait(timeout=30)
    time.sleep(0.05)
    requested = time.perf_counter()
    second = threading.Thread(target=run, args=(2, PROMPTS[1], POLICIES[1], NEW_TOKENS))
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)
    assert isinstance(outcome[1], RunCancelled), "the superseded run must stop, not finish its 4000 tokens"
    assert outcome["1-stopped"] - requested < 2.0
    assert outcome[2] == expected
    assert not tiny_lm.lock.locked()
