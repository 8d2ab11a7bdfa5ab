"""Typed per-session state: what the sidebar chose, the results computed so far, the run in progress.

Everything a user sees lives in `st.session_state` (one per browser session); the model itself is
shared by the process (see `ui.model`). Results are kept in a small LRU keyed by everything that
changes a run, so going back to an earlier budget or switching pages never recomputes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

import kvcrush
from kvcrush.trace import GenerationResult

KVCRUSH_ONLY = ("base", "crush_fraction", "anchor", "signature_heads", "granularity", "block_size")
SEEDED = ("random", "kvcrush")
MAX_RESULTS = 32


@dataclass(frozen=True)
class PolicyConfig:
    """A policy as the sidebar describes it; `build()` turns it into a `kvcrush` policy."""

    name: str = "kvcrush"
    budget: float | int = 0.25
    base: str = "snapkv"
    crush_fraction: float = 0.25
    anchor: str = "alternating"
    signature_heads: str = "query"
    granularity: str = "token"
    block_size: int = 16
    seed: int = 0

    def normalized(self) -> PolicyConfig:
        """Drop settings this policy ignores, so equal runs share one cache entry."""
        defaults = PolicyConfig()
        changes: dict[str, Any] = {}
        if self.name != "kvcrush":
            changes.update({k: getattr(defaults, k) for k in KVCRUSH_ONLY})
        if self.name not in SEEDED:
            changes["seed"] = 0
        if self.name == "full":
            changes["budget"] = 1.0
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        if self.name == "kvcrush":
            return {
                "base": self.base, "crush_fraction": float(self.crush_fraction), "anchor": self.anchor,
                "signature_heads": self.signature_heads, "granularity": self.granularity,
                "block_size": int(self.block_size), "seed": int(self.seed),
            }
        return {"seed": int(self.seed)} if self.name in SEEDED else {}

    def build(self) -> kvcrush.Policy:
        """The engine policy (raises a `KVCrushError` with a readable message on bad settings)."""
        return kvcrush.make_policy(self.name, self.budget, **self.options())

    def with_name(self, name: str) -> PolicyConfig:
        return dataclasses.replace(self, name=name).normalized()

    def with_budget(self, budget: float | int) -> PolicyConfig:
        return dataclasses.replace(self, budget=budget).normalized()

    @property
    def budget_text(self) -> str:
        return budget_text(self.budget)

    @property
    def label(self) -> str:
        """Short name for legends: the policy, plus the base for KVCrush."""
        if self.name == "kvcrush":
            suffix = f"{self.base}, {self.granularity}" if self.granularity == "block" else self.base
            return f"kvcrush ({suffix})"
        return self.name


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

    @property
    def digest(self) -> str:
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
    max_new_tokens: int = 32
    query_aware: bool = False
    auto_run: bool = True


@dataclass(frozen=True)
class AppConfig:
    """Everything the shared sidebar decided on this rerun. `prompt` is None when there is no text."""

    model: ModelChoice
    policy: PolicyConfig
    prompt: PromptInput | None
    options: RunOptions
    prompt_error: str | None = None
    run_request: str | None = None  # 'run' or 'force' when a sidebar button was pressed this rerun


@dataclass(frozen=True)
class RunRequest:
    """One call of `kvcrush.generate`; `key` names its result in the session's store."""

    model: ModelChoice
    policy: PolicyConfig
    prompt: PromptInput
    max_new_tokens: int
    query_aware: bool
    reference_ids: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        policy = dataclasses.asdict(self.policy.normalized())
        return _digest([
            self.model.name.strip(), self.model.device, json.dumps(policy, sort_keys=True), self.prompt.digest,
            str(self.max_new_tokens), str(self.query_aware), ",".join(map(str, self.reference_ids)),
        ])

    @classmethod
    def from_config(cls, config: AppConfig, policy: PolicyConfig | None = None,
                    reference_ids: tuple[int, ...] = ()) -> RunRequest:
        assert config.prompt is not None
        return cls(config.model, (policy or config.policy).normalized(), config.prompt,
                   config.options.max_new_tokens, config.options.query_aware, tuple(reference_ids))


@dataclass
class RunRecord:
    """A finished run: the engine's result plus how long the whole call took here."""

    request: RunRequest
    result: GenerationResult
    wall_s: float
    finished_at: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        return self.request.policy.label


class ResultStore:
    """Least-recently-used results of this session (at most `MAX_RESULTS`)."""

    def __init__(self, capacity: int = MAX_RESULTS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, RunRecord] = OrderedDict()

    def get(self, key: str) -> RunRecord | None:
        record = self._items.get(key)
        if record is not None:
            self._items.move_to_end(key)
        return record

    def put(self, record: RunRecord) -> None:
        self._items[record.request.key] = record
        self._items.move_to_end(record.request.key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def drop(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


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
