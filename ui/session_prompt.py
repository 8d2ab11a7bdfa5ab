"""This session's one prepared prompt (`kvcrush.prepare`): prefilled once, reused by every run on it.

A budget, a policy option or a base policy never changes the prefill, so every page's runs on the
current prompt share one `PreparedPrompt` (its full KV cache, kept hidden states and cached scores).
It lives in `st.session_state`, keyed by `PromptKey` (model, device, prompt and question, query mode,
chat template). Only one is kept per session, because it holds the whole prompt's cache: a new key
drops the old one *before* the next prefill allocates, and `release_stale` drops it as soon as the
sidebar's prompt, query mode or model changes, even when nothing runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

import kvcrush
from kvcrush.devices import release_memory
from ui.state import PromptKey, RunRequest

SLOT = "_prepared"


@dataclass
class SessionPrompt:
    """The prepared prompt and the key it was prepared for."""

    key: PromptKey
    prepared: kvcrush.PreparedPrompt


def held() -> SessionPrompt | None:
    return st.session_state.get(SLOT)


def current(lm: kvcrush.LoadedModel, key: PromptKey) -> kvcrush.PreparedPrompt | None:
    """The session's prepared prompt when it was made for `key` on this very model object."""
    entry = held()
    if entry is not None and entry.key == key and entry.prepared.lm is lm:
        return entry.prepared
    return None


def release() -> None:
    """Drop the session's prepared prompt and give its memory back (the allocator's cache too on CUDA)."""
    entry = st.session_state.pop(SLOT, None)
    if entry is None:
        return
    devices = entry.prepared.lm.devices
    del entry
    release_memory(devices)  # free it now, not at some later collection, so the next prefill finds the memory


def release_stale(key: PromptKey | None) -> None:
    """Drop the prepared prompt when the sidebar no longer describes it (prompt, question, mode or model)."""
    entry = held()
    if entry is not None and entry.key != key:
        release()


def obtain(lm: kvcrush.LoadedModel, request: RunRequest, progress: Callable[[str, int, int], None] | None,
           should_stop: Callable[[], bool]) -> kvcrush.PreparedPrompt:
    """The prepared prompt for `request`: the session's own, or a new prefill (the old one dropped first).

    `kvcrush.prepare` runs the memory preflight for the prefill; with the old prompt already dropped,
    the memory it held counts as available again. A run superseded meanwhile (`should_stop`) keeps
    what it prepared to itself, so an older script thread never replaces a newer thread's prompt.
    """
    key = request.prompt_key
    found = current(lm, key)
    if found is not None:
        return found
    release()
    prepared = kvcrush.prepare(lm, request.prompt.context, question=request.prompt.question,
                               query_aware=request.query_aware, chat_template=key.chat_template,
                               progress=progress, should_stop=should_stop)
    if not should_stop():
        st.session_state[SLOT] = SessionPrompt(key, prepared)
    return prepared
