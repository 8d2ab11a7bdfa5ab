"""What a compression run records (spec section 5): the UI renders these and never recomputes them."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from kvcrush.compact import index_dtype, narrowed, pack_bits, small_dtype, unpack_bits
from kvcrush.host import to_host
from kvcrush.score_view import ScoreView

# Per-token status codes, in the order the UI's legend shows them.
EVICTED, SINK, RECENT, IMPORTANT, REPRESENTATIVE, PROTECTED = range(6)
STATUS_NAMES = ("evicted", "sink", "recent", "kept (importance)", "KVCrush representative", "question")


@dataclass
class LayerTrace:
    """One layer's decisions. Positions are absolute token indices in the prompt.

    scores: `[kv_heads, M]` float32 base importance of the M middle tokens `[middle_start, middle_end)`: the
        recorded `stored_scores`, else read through `score_view` from the scores the selection used (a
        prepared prompt's, shared rather than copied; `kvcrush.score_view`). None when neither exists.
    signatures: `[M, H]` bool head signatures (KVCrush only), H query or KV heads; held packed eight per
        byte (`packed_signatures`, `[M, ceil(H / 8)]` uint8, `signature_width` = H).
    anchor: `[width]` bool; width H (token level) or `block_size * H` (block level).
    distances: `[units]` Hamming distance of every middle unit (token or block) to the anchor.
    candidates / representatives: unit ids (token positions, or block ids at block level).
    buckets: for each representative, the candidate units it stands in for (a list of `[members]` views of
        `bucket_members`, `[P]` every bucket's units one after the other, cut at `bucket_sizes`, `[k]` int32; one
        tensor per layer rather than hundreds, which the host copy and a session's memory pay per tensor).
    blocks: `[n_blocks, 2]` start/end token positions of each block (block level only).
    kept: `[kv_heads, T]` kept context positions per KV head, ascending.

    Integers are stored in the narrowest type that holds them (`compact`, which every move to the host applies):
    positions and unit ids int32 (PyTorch indexes with them; `gather` and `scatter` need `.long()`), distances and
    anchor ids int8 where they fit.

    KVCrush beyond the paper (spec section 7; recorded on every KVCrush layer):
    anchors: `[k, width]` bool, every anchor (`anchor` is `anchors[0]`); with k > 1, `distances` are
    each unit's distance to its nearest anchor. unit_anchor: `[units]` int64, that nearest anchor's
    index (the group of each candidate). bucket_anchor: `[buckets]` int64, the anchor of each bucket.
    crush_fraction: the layer's crush fraction (the adaptive split moves it per layer).
    merge_weights: with `merge="values"`, for each bucket `[kv_heads, members]` float32 softmax weights (views of
    `merge_weight_rows`, `[kv_heads, P]` in `bucket_members`' order)
    of its members (in the bucket's order, each head's row sums to 1); the representative's value row in
    the compressed cache is the weighted sum of the members' value rows (`merge_rows`). Empty otherwise.
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
    stored_scores: torch.Tensor | None = None
    packed_signatures: torch.Tensor | None = None
    signature_width: int = 0
    anchor: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    representatives: torch.Tensor | None = None
    bucket_members: torch.Tensor | None = None
    bucket_sizes: torch.Tensor | None = None
    granularity: str = "token"
    block_size: int = 1
    blocks: torch.Tensor | None = None
    score_s: float = 0.0
    select_s: float = 0.0
    crush_s: float = 0.0
    protected: int = 0  # query-aware: the question's tokens at the end, always kept
    anchors: torch.Tensor | None = None
    unit_anchor: torch.Tensor | None = None
    bucket_anchor: torch.Tensor | None = None
    crush_fraction: float | None = None
    merge_weight_rows: torch.Tensor | None = None
    # Quantized storage (`kv_bits` / `representative_bits` below 16): `[kv_heads, T]` int8 bits each kept
    # row is stored at, aligned with `kept` (16: full precision, e.g. the residual window). None: all 16.
    row_bits: torch.Tensor | None = None
    # A sliding-window layer (`kvcrush.sliding`) holds only the prompt rows from this position on: the budget
    # applies to those rows, positions before it are outside the layer's window (evicted by the model itself).
    held_from: int = 0
    # KVCrush's cut-offs as its selection used them, in units (tokens, or blocks at block level): candidates are
    # the units outside every head's top `importance_units` (T_imp); `crush_units` representatives were wanted
    # (T_crush); each head kept its top `importance_kept` units other than the representatives, which is
    # T_imp plus what the representatives left unused paid for (at `BudgetPlan.representative_cost` under a
    # budget in bytes). None for policies without representatives (their cut-off is `importance`).
    importance_units: int | None = None
    crush_units: int | None = None
    importance_kept: int | None = None
    score_view: ScoreView | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def buckets(self) -> list[torch.Tensor]:
        """`[members]` units of each bucket, views of `bucket_members` (made once per trace; see the class)."""
        if self.bucket_members is None or self.bucket_sizes is None:
            return []
        return list(torch.split(self.bucket_members, self.bucket_sizes.tolist()))

    @functools.cached_property
    def merge_weights(self) -> list[torch.Tensor]:
        """`[kv_heads, members]` merge weights of each bucket, views of `merge_weight_rows` (see the class)."""
        if self.merge_weight_rows is None or self.bucket_sizes is None:
            return []
        return list(torch.split(self.merge_weight_rows, self.bucket_sizes.tolist(), dim=1))

    def set_buckets(self, buckets: list[torch.Tensor], merge_weights: torch.Tensor | None = None) -> None:
        """Record buckets given as a list of `[members]` unit tensors (joined here, on their device; their sizes
        are shapes, read without a sync) and, with a value merge, their joined `[kv_heads, P]` weights."""
        members = torch.cat(buckets) if buckets else None
        self.set_joined_buckets(members, [b.numel() for b in buckets], merge_weights)

    def set_joined_buckets(self, members: torch.Tensor | None, sizes: list[int],
                           merge_weights: torch.Tensor | None = None) -> None:
        """Record buckets already joined: `[P]` members in bucket order and each bucket's size (host ints)."""
        self.bucket_members = members if sizes else None
        # On the host on purpose, whatever the members' device: made from shapes, read without a sync.
        self.bucket_sizes = torch.tensor(sizes, dtype=torch.int32, device="cpu") if sizes else None
        self.merge_weight_rows = merge_weights
        self._forget_views()

    def member_buckets(self) -> torch.Tensor:
        """`[P]` int64, on the host: the bucket of every member of `bucket_members`, in its order (from the sizes
        alone, so no device read). Empty without buckets."""
        if self.bucket_members is None or self.bucket_sizes is None:
            return torch.zeros(0, dtype=torch.int64, device="cpu")
        sizes = self.bucket_sizes.long()
        if sizes.device.type != "cpu":  # a trace built elsewhere; `set_joined_buckets` makes them on the host
            sizes = sizes.to("cpu")
        return torch.repeat_interleave(torch.arange(sizes.shape[0], device="cpu"), sizes,
                                       output_size=self.bucket_members.shape[0])

    def _forget_views(self) -> None:
        for name in ("buckets", "merge_weights"):
            self.__dict__.pop(name, None)

    @property
    def scores(self) -> torch.Tensor | None:
        if self.stored_scores is not None:
            return self.stored_scores
        return None if self.score_view is None else self.score_view.resolve()

    def keep_scores(self) -> LayerTrace:
        """Store the scores in this trace (in place; for a trace that outlives what its view reads, or an
        export) and drop the view."""
        if self.stored_scores is None and self.score_view is not None:
            self.stored_scores = self.score_view.resolve()
        self.score_view = None
        return self

    def export_fields(self) -> dict[str, Any]:
        """Every field for a saved or exported trace, with the scores included, the signatures unpacked and the
        buckets and merge weights as lists (`scores`, `signatures`, `buckets`, `merge_weights` in place of their
        compact forms)."""
        compact_forms = {"stored_scores", "packed_signatures", "signature_width", "score_view", "bucket_members",
                         "bucket_sizes", "merge_weight_rows"}
        exported = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in compact_forms}
        return {**exported, "scores": self.scores, "signatures": self.signatures, "buckets": self.buckets,
                "merge_weights": self.merge_weights}

    @property
    def signatures(self) -> torch.Tensor | None:
        if self.packed_signatures is None:
            return None
        return unpack_bits(self.packed_signatures, self.signature_width)

    def set_signatures(self, bits: torch.Tensor | None) -> None:
        """Record `[M, H]` bool signatures, packed eight per byte (on their device)."""
        self.packed_signatures = None if bits is None else pack_bits(bits)
        self.signature_width = 0 if bits is None else int(bits.shape[-1])

    def compact(self) -> LayerTrace:
        """Integers in the narrowest types that hold them (in place, on the trace's device; see the class)."""
        positions = index_dtype(max(self.n_tokens, 1))
        for name in ("kept", "candidates", "representatives", "blocks"):
            setattr(self, name, narrowed(getattr(self, name), positions))
        self.bucket_members = narrowed(self.bucket_members, positions)
        self._forget_views()
        width = self.anchors.shape[-1] if self.anchors is not None else self.signature_width * self.block_size
        self.distances = narrowed(self.distances, small_dtype(max(width, 1)))
        anchors = 1 if self.anchors is None else self.anchors.shape[0]
        self.unit_anchor = narrowed(self.unit_anchor, small_dtype(anchors))
        self.bucket_anchor = narrowed(self.bucket_anchor, small_dtype(anchors))
        return self

    @property
    def middle_start(self) -> int:
        return self.held_from + self.sink

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor this layer's trace holds (`numel * element_size`)."""
        return sum(self.field_nbytes().values())

    def own_tensors(self) -> list[torch.Tensor]:
        """The tensors of this trace's fields, in field order."""
        return _tensor_slots([self])[1]

    def field_nbytes(self) -> dict[str, int]:
        """Bytes per field holding a tensor, in field order."""
        sizes: dict[str, int] = {}
        for (_, name), tensor in zip(*_tensor_slots([self]), strict=True):
            sizes[name] = sizes.get(name, 0) + tensor.numel() * tensor.element_size()
        return sizes

    @property
    def n_held(self) -> int:
        """Prompt rows this layer held before the policy chose (all but a sliding layer's out-of-window ones)."""
        return self.n_tokens - self.held_from

    def shifted(self, offset: int, n_tokens: int) -> LayerTrace:
        """This trace, made over a sliding layer's held rows `[offset, n_tokens)` at local indices, in prompt
        positions (`held_from = offset`). Block ids stay ids; their token spans move."""
        def moved(units: torch.Tensor | None) -> torch.Tensor | None:
            return None if units is None else units + offset

        tokens = self.granularity == "token" or self.blocks is None
        return dataclasses.replace(
            self, n_tokens=n_tokens, held_from=offset, kept=self.kept + offset,
            candidates=moved(self.candidates) if tokens else self.candidates,
            representatives=moved(self.representatives) if tokens else self.representatives,
            bucket_members=moved(self.bucket_members) if tokens else self.bucket_members,
            blocks=moved(self.blocks))

    @property
    def middle_end(self) -> int:
        return self.n_tokens - self.recent

    def unit_tokens(self, units: torch.Tensor | None) -> torch.Tensor:
        """Token positions covered by candidate/representative units (identity at token level)."""
        if units is None or units.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=self.kept.device)
        if self.granularity == "token" or self.blocks is None:
            return units.long()
        starts = self.blocks[units.long(), 0]  # every block holds block_size tokens
        return (starts[:, None] + torch.arange(self.block_size, device=starts.device)).reshape(-1)

    def representative_tokens(self) -> torch.Tensor:
        return self.unit_tokens(self.representatives)

    def merge_rows(self) -> MergeRows | None:
        """The value merge of this layer as token rows (None when nothing is merged).

        At block level token i of a representative block takes token i of each member block, weighted by
        the member block's weight, so whole blocks stay aligned (paged caches).
        """
        if self.merge_weight_rows is None or self.representatives is None or self.bucket_members is None:
            return None
        members = self.bucket_members.long()
        slot = self.member_buckets()
        if slot.device != members.device:  # a trace still on its layer's device
            slot = slot.to(members.device)
        targets = self.representatives.long()
        weights = self.merge_weight_rows.float()
        if self.granularity == "block" and self.blocks is not None:
            size = self.block_size
            within = torch.arange(size, device="cpu")  # as `slot`: made where the trace lives
            if within.device != members.device:
                within = within.to(members.device)
            targets = (self.blocks[targets, 0][:, None] + within).reshape(-1)
            members = (self.blocks[members, 0][:, None] + within).reshape(-1)
            slot = (slot[:, None] * size + within).reshape(-1)
            weights = weights.repeat_interleave(size, dim=1)
        return MergeRows(targets, members, slot, weights)

    def token_status(self, head: int) -> torch.Tensor:
        """`[n_tokens]` status code of every context token for one KV head (see STATUS_NAMES)."""
        status = torch.full((self.n_tokens,), EVICTED, dtype=torch.int8)
        status[self.kept[head].long()] = IMPORTANT
        status[self.representative_tokens()] = REPRESENTATIVE
        status[self.held_from : self.middle_start] = SINK
        if self.recent:
            status[self.n_tokens - self.recent :] = RECENT
        if self.protected:
            status[self.n_tokens - self.protected :] = PROTECTED
        return status


@dataclass
class MergeRows:
    """Which value rows merge into which (spec section 7, `merge="values"`), in token positions.

    targets: `[R]` representative rows. members: `[P]` member rows. slot: `[P]` index into `targets` of
    the row each member merges into. weights: `[kv_heads, P]` its weight per KV head (summing to 1 per
    target and head). Merged row r of head h: `sum_{p: slot[p] = r} weights[h, p] * values[h, members[p]]`.
    """

    targets: torch.Tensor
    members: torch.Tensor
    slot: torch.Tensor
    weights: torch.Tensor


@dataclass
class Timings:
    """Seconds measured with `time.perf_counter` around the real work, waiting for the device before and after
    (`kvcrush.devices.synchronize`) so queued GPU work counts where it was launched.

    prefill_s: the model's forward over the prompt (done once per prepared prompt; `prefill_reused`
        says this run reused it) plus appending the uncompressed tail on the compressed cache.
    score_s: computing this policy's scores on every layer (`score_reused`: computed by an earlier
        run on the same prepared prompt; the time is what it cost then).
    select_s: turning scores into kept tokens on every layer, and gathering the compressed cache.
    crush_s: KVCrush's share of `select_s` (signatures, anchor, distances, representatives, buckets,
        and refilling the importance part around the representatives), timed once for every layer; each
        `LayerTrace.crush_s` is a share of it (in proportion to the layer's host-side time), while
        `LayerTrace.select_s` is a host-side time that does not wait for the device.
    decode_evict_s: decode-time eviction's share of `decode_s`, timed once per eviction (every layer due at
        that step together).
    """

    prefill_s: float = 0.0
    score_s: float = 0.0
    select_s: float = 0.0
    crush_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens: int = 0
    decode_evict_s: float = 0.0
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

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the trace holds, over all layers (`LayerTrace.nbytes`; token strings aside)."""
        return sum(layer.nbytes for layer in self.layers)

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the trace keeps alive: its own and the scores its views read (`kvcrush.score_view`), for
        counting what a session holds (`kvcrush.sizes.unique_nbytes`, which counts shared storage once)."""
        for layer in self.layers:
            yield from layer.own_tensors()
            if layer.score_view is not None:
                yield layer.score_view.source


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
    reference: Any = None  # `kvcrush.decoding.ReferenceScores` of the reference ids, when given

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

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor this result keeps alive (`RunTrace.tensors`, decode-time evictions, final cache positions)."""
        yield from self.trace.tensors()
        for eviction in self.decode_evictions:
            yield from eviction.tensors()
        yield from (positions for positions in self.cache_positions or [] if isinstance(positions, torch.Tensor))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _tensor_slots(traces: Sequence[LayerTrace]) -> tuple[list[tuple[LayerTrace, str]], list[torch.Tensor]]:
    """Every tensor field of every trace and where it sits."""
    slots: list[tuple[LayerTrace, str]] = []
    tensors: list[torch.Tensor] = []
    for trace in traces:
        for f in fields(trace):
            value = getattr(trace, f.name)
            if isinstance(value, torch.Tensor):
                slots.append((trace, f.name))
                tensors.append(value)
    return slots, tensors


def traces_to_host(traces: list[LayerTrace], extra: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Move every tensor of every trace to the CPU in one copy per device (in place), with `extra` tensors.

    Per-layer selection leaves its results on the layer's device; a selection calls this once after its
    last layer, so it waits for the accelerator once instead of once per tensor and layer. Every trace is
    compacted first (`LayerTrace.compact`, on its device), so the copy moves the narrow integers. Returns
    `extra`'s CPU copies, in order.
    """
    for trace in traces:
        trace.compact()
    slots, tensors = _tensor_slots(traces)
    moved = to_host([*tensors, *extra])
    for (trace, name), tensor in zip(slots, moved, strict=False):
        setattr(trace, name, tensor)
    for trace in traces:
        trace._forget_views()
    return moved[len(tensors):]


def trace_on_host(trace: RunTrace) -> RunTrace:
    """`trace` with every layer's tensors on the CPU, in place, so views can use numpy and a session holds no
    accelerator memory. The engine's selections arrive there already (`PreparedPrompt.select`); this moves what
    another path left on a device (`traces_to_host`, one copy per device) and copies nothing otherwise."""
    _, tensors = _tensor_slots(trace.layers)
    if any(tensor.device.type != "cpu" for tensor in tensors):
        traces_to_host(trace.layers)
    return trace


def to_jsonable(value: Any) -> Any:
    """Dataclasses and tensors to plain JSON types (tensors become nested lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, LayerTrace):
        return to_jsonable(value.export_fields())
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


__all__ = [
    "EVICTED", "SINK", "RECENT", "IMPORTANT", "REPRESENTATIVE", "PROTECTED", "STATUS_NAMES",
    "LayerTrace", "MergeRows", "RunTrace", "Timings", "GenerationResult", "to_jsonable", "asdict", "traces_to_host",
    "trace_on_host",
]
