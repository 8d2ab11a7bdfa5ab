"""KVCrush's units (tokens, or blocks at block granularity) of one layer, laid out for display.

Everything is read from the trace: signatures, anchor(s), distances, candidates, representatives and
buckets. With several anchors (KVCrush's `anchors` option) every unit also carries its nearest anchor's
index (`group`), and `distances` are to that anchor. Block signatures are the token-major concatenation
the engine grouped on (`kvcrush.crush.block_signatures`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvcrush.crush import block_signatures
from kvcrush.metrics import kept_mask
from kvcrush.trace import EVICTED, IMPORTANT, REPRESENTATIVE, LayerTrace, RunTrace

UNIT_STATUS = (IMPORTANT, REPRESENTATIVE, EVICTED)


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

        table = pd.DataFrame({
            "unit": np.arange(self.n_units), "start": self.starts, "end": self.ends, "text": self.labels,
            "signature": ["".join(map(str, row)) for row in self.bits], "distance": self.distances,
            "status": [STATUS_LABELS[int(s)] for s in self.status], "candidate": self.candidate,
            "bucket": self.bucket,
        })
        if self.n_anchors > 1:
            table["anchor"] = self.groups
        return table


def _label(token_strings: list[str], start: int, end: int, limit: int = 40) -> str:
    text = "".join(token_strings[start:end]).replace("\n", "↵")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unit_view(trace: RunTrace, layer: LayerTrace) -> UnitView | None:
    """None when the layer has no signatures (not a KVCrush run, or a no-op layer)."""
    if layer.signatures is None or layer.distances is None or layer.anchor is None:
        return None
    token_bits = layer.signatures.bool()
    heads = token_bits.shape[1]
    any_kept = kept_mask(layer).any(dim=0).numpy()
    if layer.granularity == "block" and layer.blocks is not None:
        size = layer.block_size
        bits = block_signatures(token_bits, size)
        starts = layer.blocks[:, 0].numpy()
        ends = layer.blocks[:, 1].numpy()
        offset = 0
        bit_labels = [f"t{t}·h{h}" for t in range(size) for h in range(heads)]
    else:
        bits = token_bits
        starts = np.arange(layer.middle_start, layer.middle_start + token_bits.shape[0])
        ends = starts + 1
        offset = layer.middle_start
        bit_labels = [f"h{h}" for h in range(heads)]
    n_units = len(starts)
    status = np.array([IMPORTANT if any_kept[s:e].any() else EVICTED for s, e in zip(starts, ends, strict=True)],
                      dtype=np.int8)
    candidate = np.zeros(n_units, dtype=bool)
    if layer.candidates is not None and layer.candidates.numel():
        candidate[layer.candidates.numpy() - offset] = True
    if layer.representatives is not None and layer.representatives.numel():
        status[layer.representatives.numpy() - offset] = REPRESENTATIVE
    bucket = np.full(n_units, -1, dtype=np.int64)
    for index, members in enumerate(layer.buckets):
        bucket[members.numpy() - offset] = index
    anchors = getattr(layer, "anchors", None)
    unit_anchor = getattr(layer, "unit_anchor", None)
    return UnitView(
        granularity=layer.granularity, starts=starts, ends=ends, bits=bits.numpy().astype(np.uint8),
        anchor=layer.anchor.numpy().astype(np.uint8), distances=layer.distances.numpy().astype(np.int64),
        status=status, bucket=bucket, candidate=candidate,
        labels=[_label(trace.token_strings, int(s), int(e)) for s, e in zip(starts, ends, strict=True)],
        bit_labels=bit_labels,
        group=None if unit_anchor is None else unit_anchor.numpy().astype(np.int64),
        anchors=None if anchors is None else anchors.numpy().astype(np.uint8),
    )


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
    """One row per bucket: its representative, size, distance range and the first members."""
    rows = []
    several = view.n_anchors > 1
    for index in range(int(view.bucket.max()) + 1 if view.n_units and view.bucket.max() >= 0 else 0):
        members = np.flatnonzero(view.bucket == index)
        members = members[np.lexsort((view.starts[members], view.distances[members]))]
        reps = [m for m in members if view.status[m] == REPRESENTATIVE]
        rep = reps[0] if reps else members[0]
        row = {"bucket": index, "anchor": int(view.groups[members[0]])} if several else {"bucket": index}
        rows.append({
            **row,
            "representative": f"#{view.starts[rep]} {view.labels[rep]}",
            "size": len(members),
            "distance": f"{view.distances[members].min()}–{view.distances[members].max()}",
            "members": " · ".join(f"#{view.starts[m]} {view.labels[m]}" for m in members[:preview])
            + (" …" if len(members) > preview else ""),
        })
    columns = ["bucket", "anchor"] if several else ["bucket"]
    return pd.DataFrame(rows, columns=[*columns, "representative", "size", "distance", "members"])
