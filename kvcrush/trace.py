"""What a compression run records (spec section 5): the UI renders these and never recomputes them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

# Per-token status codes, in the order the UI's legend shows them.
EVICTED, SINK, RECENT, IMPORTANT, REPRESENTATIVE, PROTECTED = range(6)
STATUS_NAMES = ("evicted", "sink", "recent", "kept (importance)", "KVCrush representative", "question")


@dataclass
class LayerTrace:
    """One layer's decisions. Positions are absolute token indices in the prompt.

    scores: `[kv_heads, M]` base importance of the M middle tokens `[middle_start, middle_end)`.
    signatures: `[M, H]` bool head signatures (KVCrush only), H query or KV heads.
    anchor: `[width]` bool; width H (token level) or `block_size * H` (block level).
    distances: `[units]` Hamming distance of every middle unit (token or block) to the anchor.
    candidates / representatives: unit ids (token positions, or block ids at block level).
    buckets: for each representative, the candidate units it stands in for.
    blocks: `[n_blocks, 2]` start/end token positions of each block (block level only).
    kept: `[kv_heads, T]` kept context positions per KV head, ascending.
    """

    layer: int
    n_tokens: int
    budget: int
    sink: int
    recent: int
    importance: int
    crush: int
    crush_used: int
    no_op: bool
    kept: torch.Tensor
    scores: torch.Tensor | None = None
    signatures: torch.Tensor | None = None
    anchor: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    representatives: torch.Tensor | None = None
    buckets: list[torch.Tensor] = field(default_factory=list)
    granularity: str = "token"
    block_size: int = 1
    blocks: torch.Tensor | None = None
    score_s: float = 0.0
    select_s: float = 0.0
    crush_s: float = 0.0
    protected: int = 0  # query-aware: the question's tokens at the end, always kept

    @property
    def middle_start(self) -> int:
        return self.sink

    @property
    def middle_end(self) -> int:
        return self.n_tokens - self.recent

    def unit_tokens(self, units: torch.Tensor | None) -> torch.Tensor:
        """Token positions covered by candidate/representative units (identity at token level)."""
        if units is None or units.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.granularity == "token" or self.blocks is None:
            return units.long()
        spans = self.blocks[units.long()]
        return torch.cat([torch.arange(int(s), int(e)) for s, e in spans.tolist()])

    def representative_tokens(self) -> torch.Tensor:
        return self.unit_tokens(self.representatives)

    def token_status(self, head: int) -> torch.Tensor:
        """`[n_tokens]` status code of every context token for one KV head (see STATUS_NAMES)."""
        status = torch.full((self.n_tokens,), EVICTED, dtype=torch.int8)
        status[self.kept[head].long()] = IMPORTANT
        status[self.representative_tokens()] = REPRESENTATIVE
        status[: self.sink] = SINK
        if self.recent:
            status[self.n_tokens - self.recent :] = RECENT
        if self.protected:
            status[self.n_tokens - self.protected :] = PROTECTED
        return status


@dataclass
class Timings:
    """Seconds measured with `time.perf_counter` around the real work.

    prefill_s: the model's forward over the prompt (done once per prepared prompt; `prefill_reused`
        says this run reused it) plus appending the uncompressed tail on the compressed cache.
    score_s: computing this policy's scores on every layer (`score_reused`: computed by an earlier
        run on the same prepared prompt; the time is what it cost then).
    select_s: turning scores into kept tokens on every layer, and gathering the compressed cache.
    crush_s: KVCrush's share of `select_s` (signatures, anchor, distances, representatives, buckets,
        and refilling the importance part around the representatives).
    """

    prefill_s: float = 0.0
    score_s: float = 0.0
    select_s: float = 0.0
    crush_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens: int = 0
    decode_evict_s: float = 0.0  # decode-time eviction's share of decode_s
    prefill_reused: bool = False
    score_reused: bool = False

    @property
    def policy_s(self) -> float:
        """Everything the policy cost: scoring plus selection."""
        return self.score_s + self.select_s

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.score_s + self.select_s + self.decode_s

    @property
    def decode_per_token_s(self) -> float:
        return self.decode_s / self.decode_tokens if self.decode_tokens else 0.0


@dataclass
class RunTrace:
    """A whole run: the prompt's tokens, the policy, and every layer's decisions.

    token_strings / n_context: the tokens under the budget (query-aware: context and question, the
    last `n_question` of them being the question); n_question: question tokens (and template suffix).
    """

    policy: dict[str, Any]
    model: str
    token_strings: list[str]
    n_context: int
    n_question: int
    query_aware: bool
    layers: list[LayerTrace] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


@dataclass
class GenerationResult:
    """The outcome of `kvcrush.generate`.

    `kv_bytes_before` / `kv_bytes_after`: bytes of the keys and values of the tokens under the budget
    (the context; the context and the question in query-aware mode) right before and after eviction,
    read from the real cache tensors. A question appended afterwards costs every policy the same.
    """

    text: str
    new_token_ids: list[int]
    kv_bytes_before: int
    kv_bytes_after: int
    timings: Timings
    trace: RunTrace
    reference_nll: float | None = None
    kv_bytes_final: int | None = None  # the cache after the answer (tail and generated tokens included)
    # `kvcrush.decode_eviction.DecodeEviction`s, in order (with a policy's decode_interval > 0)
    decode_evictions: list[Any] = field(default_factory=list)
    peak_cache_tokens: int | None = None  # the most tokens any head of any layer held while decoding
    cache_positions: list[Any] | None = None  # per layer `[kv_heads, slots]` true positions held at the end
    n_appended: int = 0  # tokens appended uncompressed after eviction (question and/or template suffix)

    @property
    def prefill_s(self) -> float:
        return self.timings.prefill_s

    @property
    def select_s(self) -> float:
        return self.timings.select_s

    @property
    def decode_s(self) -> float:
        return self.timings.decode_s

    @property
    def compression(self) -> float:
        """KV bytes after / before."""
        return self.kv_bytes_after / self.kv_bytes_before if self.kv_bytes_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def to_jsonable(value: Any) -> Any:
    """Dataclasses and tensors to plain JSON types (tensors become nested lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


__all__ = [
    "EVICTED", "SINK", "RECENT", "IMPORTANT", "REPRESENTATIVE", "PROTECTED", "STATUS_NAMES",
    "LayerTrace", "RunTrace", "Timings", "GenerationResult", "to_jsonable", "asdict",
]
