"""KVCrush's units (tokens, or blocks at block granularity) of one layer, laid out for display.

What each unit is (its span, candidacy, bucket, representative and kept flags) is the library's record,
`kvcrush.explain.units.unit_marks`; this module only turns it into numpy arrays and pandas tables, vectorised
over the units and buckets. Signatures, anchor(s) and distances are read from the trace. With several anchors
(KVCrush's `anchors` option) every unit also carries its nearest anchor's index (`group`), and `distances` are
to that anchor. Block signatures are the token-major concatenation the engine grouped on
(`kvcrush.crush.block_signatures`).

A layer's view is built once per layer trace and kept (`unit_view`): a page's rerun with the same run and layer
reads it back instead of unpacking the signatures and labelling every unit again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd

from kvcrush.crush import block_signatures
from kvcrush.explain.units import unit_marks
from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE, LayerTrace, RunTrace

UNIT_STATUS = (IMPORTANT, REPRESENTATIVE, EVICTED)
LABEL_LIMIT = 40
T = TypeVar("T")


@dataclass
class UnitView:
    """Per-unit arrays of one layer. `status`: representative, kept by some head, or evicted by all."""

    granularity: str
    starts: np.ndarray
    ends: np.ndarray
    bits: np.ndarray  # [units, width] uint8
    anchor: np.ndarray  # [width] uint8
    distances: np.ndarray  # [units] int
    status: np.ndarray  # [units] status codes
    bucket: np.ndarray  # [units] bucket index, -1 when not a candidate
    candidate: np.ndarray  # [units] bool
    labels: list[str]
    bit_labels: list[str]
    group: np.ndarray | None = None  # [units] nearest anchor's index (all 0 with one anchor)
    anchors: np.ndarray | None = None  # [k, width] uint8, every anchor (row 0 is `anchor`)
    # What pages built from this view (`cached`); not copied by `dataclasses.replace`, so a restricted view
    # (`ui.plots.take_units`) starts empty.
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_units(self) -> int:
        return len(self.starts)

    @property
    def n_anchors(self) -> int:
        return 1 if self.anchors is None else len(self.anchors)

    @property
    def groups(self) -> np.ndarray:
        """`[units]` nearest anchor of every unit (zeros when the trace recorded a single anchor only)."""
        return self.group if self.group is not None else np.zeros(self.n_units, dtype=np.int64)

    def table(self) -> pd.DataFrame:
        from ui.colors import STATUS_LABELS

        names = np.array([STATUS_LABELS.get(code, "") for code in range(max(STATUS_LABELS) + 1)], dtype=object)
        table = pd.DataFrame({
            "unit": np.arange(self.n_units), "start": self.starts, "end": self.ends, "text": self.labels,
            "signature": signature_strings(self.bits), "distance": self.distances,
            "status": names[self.status.astype(np.int64)], "candidate": self.candidate, "bucket": self.bucket,
        })
        if self.n_anchors > 1:
            table["anchor"] = self.groups
        return table


def signature_strings(bits: np.ndarray) -> np.ndarray:
    """`[units]` each row of a `[units, width]` 0/1 matrix as a string of '0' and '1' (vectorised)."""
    bits = np.ascontiguousarray(np.asarray(bits, dtype=np.uint8))
    if bits.ndim != 2 or bits.shape[1] == 0:
        return np.full(len(bits), "", dtype=object)
    chars = np.ascontiguousarray(bits + ord("0"))
    return chars.view(f"S{bits.shape[1]}").ravel().astype(str).astype(object)


def unit_labels(token_strings: list[str], starts: np.ndarray, ends: np.ndarray, limit: int = LABEL_LIMIT) -> list[str]:
    """Each unit's text `[start, end)` with newlines as ↵, cut to `limit` characters with an ellipsis."""
    n = len(starts)
    if not n:
        return []
    widths = np.asarray(ends) - np.asarray(starts)
    tokens = np.asarray(token_strings, dtype=object)
    if (widths == 1).all():
        text = pd.Series(tokens[np.asarray(starts)])
    else:  # blocks: join each unit's tokens (the tokens of every unit side by side, one column per offset)
        size = int(widths.max())
        pad = np.append(tokens, "")
        index = np.asarray(starts)[:, None] + np.arange(size)
        index = np.where(index < np.asarray(ends)[:, None], index, len(tokens))
        parts = pad[index]
        text = pd.Series(parts[:, 0])
        for column in range(1, size):
            text = text + parts[:, column]
    text = text.str.replace("\n", "↵", regex=False)
    long = text.str.len() > limit
    if long.any():
        text = text.where(~long, text.str.slice(0, limit - 1) + "…")
    return text.tolist()


def _build(trace: RunTrace, layer: LayerTrace) -> UnitView | None:
    if layer.anchor is None:
        return None
    marks = unit_marks(layer)
    if marks is None:
        return None
    token_bits = layer.signatures.bool()
    heads = token_bits.shape[1]
    if marks.granularity == "block":
        size = layer.block_size
        bits = block_signatures(token_bits, size)
        bit_labels = [f"t{t}·h{h}" for t in range(size) for h in range(heads)]
    else:
        bits = token_bits
        bit_labels = [f"h{h}" for h in range(heads)]
    starts, ends = marks.starts.numpy(), marks.ends.numpy()
    representative = marks.is_representative.numpy()
    status = np.where(representative, REPRESENTATIVE, np.where(marks.kept.numpy(), IMPORTANT, EVICTED)).astype(np.int8)
    anchors = getattr(layer, "anchors", None)
    unit_anchor = getattr(layer, "unit_anchor", None)
    return UnitView(
        granularity=layer.granularity, starts=starts, ends=ends, bits=bits.numpy().astype(np.uint8),
        anchor=layer.anchor.numpy().astype(np.uint8), distances=layer.distances.numpy().astype(np.int64),
        status=status, bucket=marks.bucket.numpy(), candidate=marks.candidate.numpy(),
        labels=unit_labels(trace.token_strings, starts, ends), bit_labels=bit_labels,
        group=None if unit_anchor is None else unit_anchor.numpy().astype(np.int64),
        anchors=None if anchors is None else anchors.numpy().astype(np.uint8),
    )


# Views of the layers shown lately and per-trace memos (`trace_cached`), keyed by the layer's or trace's identity (a
# weak reference tells a reused id apart): id -> (ref to the layer, ref to its trace, view), or (ref to the trace,
# None, memo dict). A trace is never changed once recorded, so an entry stays valid as long as its object lives.
_VIEWS: OrderedDict[int, tuple] = OrderedDict()
_VIEWS_LOCK = threading.Lock()
MAX_VIEWS = 32


def unit_view(trace: RunTrace, layer: LayerTrace) -> UnitView | None:
    """None when the layer has no signatures (not a KVCrush run, or a no-op layer). Built once per layer trace
    (and run trace) and then read back; treat the arrays as read-only."""
    key = id(layer)
    with _VIEWS_LOCK:
        found = _VIEWS.get(key)
        if found is not None and found[0]() is layer and found[1]() is trace:
            _VIEWS.move_to_end(key)
            return found[2]
    view = _build(trace, layer)
    _remember(key, (weakref.ref(layer), weakref.ref(trace), view))
    return view


def _remember(key: int, entry: tuple) -> None:
    with _VIEWS_LOCK:
        for dead in [k for k, (ref, *_) in _VIEWS.items() if ref() is None]:  # traces gone: free their views
            del _VIEWS[dead]
        _VIEWS[key] = entry
        _VIEWS.move_to_end(key)
        while len(_VIEWS) > MAX_VIEWS:
            _VIEWS.popitem(last=False)


def trace_cached(trace: RunTrace, key: Hashable, build: Callable[[], T]) -> T:
    """`build()` once per run trace (by identity) and `key`, then the same object on every rerun (a page's walk
    steps, its figures). Shared between reruns and sessions showing the same trace: callers must not change it."""
    with _VIEWS_LOCK:
        found = _VIEWS.get(id(trace))
    if found is None or found[0]() is not trace or found[1] is not None:
        found = (weakref.ref(trace), None, {})
        _remember(id(trace), found)
    memo = found[2]
    with _VIEWS_LOCK:
        if id(trace) in _VIEWS:
            _VIEWS.move_to_end(id(trace))
        if key in memo:
            return memo[key]
    value = build()
    with _VIEWS_LOCK:
        return memo.setdefault(key, value)


def cached(view: UnitView, key: Hashable, build: Callable[[], T]) -> T:
    """`build()` once per view and `key` (a table, a figure: whatever depends on the view and `key` only), then
    the same object on every rerun. Views are shared (`unit_view`): callers must not change what they get."""
    with _VIEWS_LOCK:
        if key in view.memo:
            return view.memo[key]
    value = build()
    with _VIEWS_LOCK:
        return view.memo.setdefault(key, value)


def order(view: UnitView, by: str) -> np.ndarray:
    """Row order: by position, or by (distance to the anchor, position) as KVCrush sorts candidates
    (with several anchors: by (nearest anchor, distance to it, position), group after group)."""
    if by == "distance":
        return np.lexsort((view.starts, view.distances, view.groups))
    return np.arange(view.n_units)


def candidate_order(view: UnitView) -> np.ndarray:
    """The candidates in KVCrush's order: (nearest anchor, distance, position); one anchor: (distance, position)."""
    candidates = np.flatnonzero(view.candidate)
    return candidates[np.lexsort((view.starts[candidates], view.distances[candidates], view.groups[candidates]))]


def bucket_table(view: UnitView, preview: int = 6) -> pd.DataFrame:
    """One row per bucket: its representative, size, distance range and the first members (in (distance,
    position) order). Vectorised over the buckets: one sort of the bucketed units, then per-bucket reductions
    (`reduceat`) and string joins on object arrays, `preview` steps whatever the number of buckets."""
    several = view.n_anchors > 1
    columns = ["bucket", "anchor"] if several else ["bucket"]
    columns = [*columns, "representative", "size", "distance", "members"]
    members = np.flatnonzero(view.bucket >= 0)
    if not len(members):
        return pd.DataFrame(columns=columns)
    members = members[np.lexsort((view.starts[members], view.distances[members], view.bucket[members]))]
    bucket = view.bucket[members]
    firsts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # each bucket's first member in this order
    present = bucket[firsts]
    sizes = np.diff(np.r_[firsts, len(members)])
    distances = view.distances[members]
    low, high = np.minimum.reduceat(distances, firsts), np.maximum.reduceat(distances, firsts)
    labels = np.asarray(view.labels, dtype=object)
    names = "#" + view.starts[members].astype(str).astype(object) + " " + labels[members]  # object arrays of str
    # The representative: the first member marked so (the recorded one), else the bucket's first member.
    is_rep = view.status[members] == REPRESENTATIVE
    rep_rank = np.where(is_rep, np.arange(len(members)), len(members))
    first_rep = np.minimum.reduceat(rep_rank, firsts)
    rep_at = np.where(first_rep < len(members), first_rep, firsts)
    joined = names[firsts].copy()  # the first `preview` members, one place after the other
    for place in range(1, preview):
        more = sizes > place
        joined[more] = joined[more] + " · " + names[firsts[more] + place]
    joined[sizes > preview] += " …"
    table = pd.DataFrame({
        "bucket": present,
        "representative": names[rep_at],
        "size": sizes,
        "distance": low.astype(str).astype(object) + "–" + high.astype(str).astype(object),
        "members": joined,
    })
    if several:
        table.insert(1, "anchor", view.groups[members[firsts]])
    return table[columns]
