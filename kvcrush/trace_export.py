"""A run's trace as compressed NumPy arrays (`.npz`): the export for traces too large for JSON.

JSON spells every position as text: a KVCrush trace of an 8B model at 128k tokens (about 100 MiB of tensors
over 32 layers) runs to gigabytes. The `.npz` file holds the same tensors as arrays, zlib-compressed
(`numpy.savez_compressed`), and the rest as one JSON document:

- ``meta``: a 0-d string array, JSON of the run (policy, model, token strings, timings, generated text and
  bytes when a `GenerationResult` is exported) and of each layer's scalar fields (budget split, cut-offs, ...);
- ``layer{i}/{field}`` for every tensor field of layer i, with the scores included (`LayerTrace.scores`,
  float32 `[kv_heads, M]`) and the signatures packed as the trace holds them (``packed_signatures``, uint8,
  `numpy.unpackbits(..., axis=-1, bitorder="little")[..., :signature_width]` gives the `[M, H]` bits back);
- the buckets as the trace holds them: ``layer{i}/bucket_members`` (every bucket's units, in bucket order) cut
  at ``layer{i}/bucket_sizes``, and with a value merge ``layer{i}/merge_weight_rows`` (`[kv_heads, P]`, in the
  members' order).

`read_npz` gives back the meta document and the arrays by layer.
"""

from __future__ import annotations

import io
import json
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from kvcrush.trace import GenerationResult, LayerTrace, RunTrace, to_jsonable

_SKIPPED = {"score_view", "stored_scores"}  # the scores are exported as `scores`, resolved


def layer_arrays(layer: LayerTrace) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One layer's tensors as arrays and its other fields as plain data."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for f in fields(layer):
        value = getattr(layer, f.name)
        if f.name in _SKIPPED:
            continue
        if isinstance(value, torch.Tensor):
            arrays[f.name] = value.cpu().numpy()
        else:
            scalars[f.name] = value
    scores = layer.scores
    if scores is not None:
        arrays["scores"] = scores.float().cpu().numpy()
    return arrays, scalars


def to_npz(run: GenerationResult | RunTrace) -> bytes:
    """The `.npz` file of a run (a finished `GenerationResult` or a selection's `RunTrace`), as bytes."""
    trace = run.trace if isinstance(run, GenerationResult) else run
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for index, layer in enumerate(trace.layers):
        layer_data, scalars = layer_arrays(layer)
        arrays.update({f"layer{index}/{name}": array for name, array in layer_data.items()})
        layers_meta.append(scalars)
    meta: dict[str, Any] = {
        "policy": trace.policy, "model": trace.model, "token_strings": trace.token_strings,
        "n_context": trace.n_context, "n_question": trace.n_question, "query_aware": trace.query_aware,
        "timings": to_jsonable(trace.timings), "layers": layers_meta,
    }
    if isinstance(run, GenerationResult):
        meta["result"] = {name: to_jsonable(getattr(run, name)) for name in (
            "text", "new_token_ids", "kv_bytes_before", "kv_bytes_after", "kv_bytes_final", "reference_nll",
            "peak_cache_tokens", "n_appended")}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def read_npz(data: bytes) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """The meta document and, per layer, its arrays by field name (what `to_npz` wrote)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
        layers: list[dict[str, np.ndarray]] = [{} for _ in meta["layers"]]
        for key in archive.files:
            if key.startswith("layer"):
                head, name = key.split("/", 1)
                layers[int(head[len("layer"):])][name] = archive[key]
    return meta, layers


__all__ = ["layer_arrays", "read_npz", "to_npz"]
