"""Typed per-session state: what the sidebar chose, the results computed so far, the run in progress.

Everything a user sees lives in `st.session_state` (one per browser session); the model itself is
shared by the process (see `ui.model`), the session's prepared prompt by its runs (see
`ui.session_prompt`). Finished runs and selections are kept in small LRUs keyed by everything that
changes them, so going back to an earlier budget or switching pages never recomputes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import streamlit as st

import kvcrush
from kvcrush.attention_use import AttentionUse
from kvcrush.sizes import unique_nbytes
from kvcrush.trace import GenerationResult, RunTrace
from ui import policy_options

T = TypeVar("T")
MAX_RESULTS = 32
MAX_SELECTIONS = 16
# What one session's finished runs and selections may hold, in MiB (their tensors, shared storage counted once):
# results get three quarters, selections one. A compact KVCrush trace of the packaged model (30 layers) at 7k
# tokens holds about 4 MiB, so the counts above bind first there; at 128k tokens with an 8B model's heads a
# selection holds about 100 MiB and the bytes bind. The prepared prompt (full KV cache) is one per session.
SESSION_MIB_ENV = "KVCRUSH_APP_SESSION_MIB"
DEFAULT_SESSION_MIB = 1024


@dataclass(frozen=True)
class PolicyConfig:
    """A policy as the sidebar describes it; `build()` turns it into a `kvcrush` policy.

    `options` holds whatever the policy (and, for a composite such as KVCrush, its `base`) declares,
    as sorted (name, value) pairs; `normalized()` keeps only non-default declared values, so equal
    runs share one cache key.
    """

    name: str = "kvcrush"
    budget: float | int = 0.25
    base: str | None = None
    options: policy_options.Options = ()

    def normalized(self) -> PolicyConfig:
        base = (self.base or policy_options.default_base(self.name)) if policy_options.has_base(self.name) else None
        evicts = policy_options.policy_class(self.name).evicts
        return dataclasses.replace(self, base=base, budget=self.budget if evicts else 1.0,
                                   options=policy_options.normalize(self.name, base, dict(self.options)))

    def build(self) -> kvcrush.Policy:
        """The engine policy (raises a `KVCrushError` with a readable message on bad settings)."""
        config = self.normalized()
        base = {"base": config.base} if config.base else {}
        return kvcrush.make_policy(config.name, config.budget, **base, **dict(config.options))

    def with_name(self, name: str) -> PolicyConfig:
        """Another policy with this one's budget and the options it shares (e.g. SnapKV's window)."""
        return dataclasses.replace(self.normalized(), name=name).normalized()

    def with_budget(self, budget: float | int) -> PolicyConfig:
        return dataclasses.replace(self.normalized(), budget=budget).normalized()

    @property
    def budget_text(self) -> str:
        return budget_text(self.budget)

    @property
    def label(self) -> str:
        """Short name for legends: the policy, plus the base for a composite policy."""
        config = self.normalized()
        return f"{config.name} ({config.base})" if config.base else config.name

    @property
    def settings_text(self) -> str:
        """The options that differ from their defaults, e.g. 'window=64, granularity=block' ('' if none)."""
        return ", ".join(f"{key}={value}" for key, value in self.normalized().options)


def budget_text(budget: float | int) -> str:
    if isinstance(budget, int):
        return f"{budget} tokens"
    return f"{budget * 100:g}%"


@dataclass(frozen=True)
class PromptInput:
    """The text to compress, the question asked after it, and the accepted answers (examples only)."""

    source: str
    name: str
    context: str
    question: str | None = None
    answers: tuple[str, ...] = ()
    kind: str = "text"

    @functools.cached_property
    def digest(self) -> str:
        """Hashed once per rerun's prompt object, however many keys ask for it."""
        return _digest([self.context, self.question or ""])


@dataclass(frozen=True)
class ModelChoice:
    name: str = ""
    device: str = "auto"

    @property
    def load_name(self) -> str | None:
        return self.name.strip() or None


@dataclass(frozen=True)
class RunOptions:
    """`record_attention`: record what the answer attends to while decoding (`kvcrush.attention_use`)."""

    max_new_tokens: int = 32
    query_aware: bool = False
    auto_run: bool = True
    record_attention: bool = False


@dataclass(frozen=True)
class AppConfig:
    """Everything the shared sidebar decided on this rerun. `prompt` is None when there is no text."""

    model: ModelChoice
    policy: PolicyConfig
    prompt: PromptInput | None
    options: RunOptions
    prompt_error: str | None = None
    run_request: str | None = None  # 'run' or 'force' when a sidebar button was pressed this rerun

    @property
    def prompt_key(self) -> PromptKey | None:
        """The prepared prompt these settings need (None without a prompt)."""
        if self.prompt is None:
            return None
        return PromptKey(self.model.name.strip(), self.model.device, self.prompt.digest, self.options.query_aware)


@dataclass(frozen=True)
class PromptKey:
    """Everything that changes a prefill; the session keeps one prepared prompt (`ui.session_prompt`) per key."""

    model: str
    device: str
    prompt: str  # digest of the context and the question
    query_aware: bool
    chat_template: bool | None = None  # None: the tokenizer's template when it has one (the app never overrides)


@dataclass(frozen=True)
class RunRequest:
    """One run (`prepared.select` + `prepared.generate`); `key` names its result in the session's store."""

    model: ModelChoice
    policy: PolicyConfig
    prompt: PromptInput
    max_new_tokens: int
    query_aware: bool
    reference_ids: tuple[int, ...] = ()
    record_attention: bool = False

    @property
    def prompt_key(self) -> PromptKey:
        return PromptKey(self.model.name.strip(), self.model.device, self.prompt.digest, self.query_aware)

    @property
    def selection_key(self) -> str:
        """What the kept tokens depend on: the prompt and the policy, not the decoding settings."""
        policy = dataclasses.asdict(self.policy.normalized())
        return _digest([json.dumps(dataclasses.asdict(self.prompt_key), sort_keys=True),
                        json.dumps(policy, sort_keys=True)])

    @property
    def key(self) -> str:
        parts = [self.selection_key, str(self.max_new_tokens), ",".join(map(str, self.reference_ids))]
        return _digest(parts + (["attention"] if self.record_attention else []))

    @classmethod
    def from_config(cls, config: AppConfig, policy: PolicyConfig | None = None,
                    reference_ids: tuple[int, ...] = ()) -> RunRequest:
        assert config.prompt is not None
        return cls(config.model, (policy or config.policy).normalized(), config.prompt,
                   config.options.max_new_tokens, config.options.query_aware, tuple(reference_ids),
                   config.options.record_attention)


@dataclass
class RunRecord:
    """A finished run: the engine's result plus how long the whole call took here.

    attention: what the answer attended to (`kvcrush.attention_use.AttentionUse`), when the request asked.
    """

    request: RunRequest
    result: GenerationResult
    wall_s: float
    finished_at: float = field(default_factory=time.time)
    attention: AttentionUse | None = None

    @property
    def label(self) -> str:
        return self.request.policy.label


def session_byte_limit() -> int:
    """Bytes one session's results and selections may hold together (`KVCRUSH_APP_SESSION_MIB`, default 1024)."""
    try:
        mib = float(os.environ.get(SESSION_MIB_ENV, DEFAULT_SESSION_MIB))
    except ValueError:
        mib = DEFAULT_SESSION_MIB
    return int(max(mib, 1.0) * 2**20)


class LRUStore(Generic[T]):
    """The least recently used values are dropped beyond `capacity` values, or while the values' tensors hold more
    than `byte_limit` bytes (`tensors_of(value)`; storage shared between values counted once), the newest value
    always kept. Thread-safe: a run's answer is stored by its worker thread (`ui.answer`) while the script thread
    reads."""

    def __init__(self, capacity: int, byte_limit: int | None = None,
                 tensors_of: Callable[[T], Iterable[Any]] | None = None) -> None:
        self.capacity = capacity
        self.byte_limit = byte_limit
        self._tensors_of = tensors_of
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def set(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            if self.byte_limit is not None and self._tensors_of is not None:
                while len(self._items) > 1 and self._nbytes() > self.byte_limit:
                    self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def nbytes(self) -> int:
        """Bytes the stored values' tensors hold (0 without `tensors_of`)."""
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        if self._tensors_of is None:
            return 0
        return unique_nbytes(itertools.chain.from_iterable(self._tensors_of(v) for v in self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


def record_tensors(record: RunRecord) -> Iterable[Any]:
    """The tensors a finished run keeps alive: its result's and its attention record's."""
    yield from record.result.tensors()
    if record.attention is not None:
        yield from (value for value in vars(record.attention).values() if hasattr(value, "untyped_storage"))


class ResultStore(LRUStore[RunRecord]):
    """Finished runs of this session (at most `MAX_RESULTS`, and three quarters of `session_byte_limit()`), by
    `RunRequest.key`."""

    def __init__(self, capacity: int = MAX_RESULTS, byte_limit: int | None = None) -> None:
        super().__init__(capacity, byte_limit if byte_limit is not None else session_byte_limit() * 3 // 4,
                         record_tensors)

    def put(self, record: RunRecord) -> None:
        self.set(record.request.key, record)


class SelectionStore(LRUStore[RunTrace]):
    """Selections (traces without decoding) of this session, by `RunRequest.selection_key`: going back to a
    budget shows its kept tokens at once even when its answer was never finished. At most `MAX_SELECTIONS`, and a
    quarter of `session_byte_limit()`."""

    def __init__(self, capacity: int = MAX_SELECTIONS, byte_limit: int | None = None) -> None:
        super().__init__(capacity, byte_limit if byte_limit is not None else session_byte_limit() // 4,
                         RunTrace.tensors)


@dataclass
class RunControl:
    """The id of the run this session wants; an older run sees a different id and stops."""

    current: str | None = None


def _digest(parts: list[str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass"))
        hasher.update(b"\x1f")
    return hasher.hexdigest()[:24]


def _session_object(name: str, factory):
    if name not in st.session_state:
        st.session_state[name] = factory()
    return st.session_state[name]


def results() -> ResultStore:
    return _session_object("_results", ResultStore)


def selections() -> SelectionStore:
    return _session_object("_selections", SelectionStore)


def run_control() -> RunControl:
    return _session_object("_run_control", RunControl)


def set_config(config: AppConfig) -> None:
    st.session_state["_config"] = config


RUN_FLAG = "_run_request"


def request_run(kind: str) -> None:
    """Sidebar button callbacks: 'run' (compute what is missing) or 'force' (recompute)."""
    st.session_state[RUN_FLAG] = kind


def take_run_request() -> str | None:
    """The button pressed since the last rerun (read once per rerun, by the sidebar)."""
    return st.session_state.pop(RUN_FLAG, None)
