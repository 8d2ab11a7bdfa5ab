"""A trace exported as compressed arrays reads back to the trace's own values, and is smaller than its JSON."""

from __future__ import annotations

import json

import numpy as np
import torch

import kvcrush
from kvcrush.trace import to_jsonable
from kvcrush.trace_export import read_npz, to_npz


def test_npz_export_reads_back_every_field(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt[:3000])
    policy = kvcrush.make_policy("kvcrush", budget=0.3, merge="values", anchors=2)
    result = prepared.generate(policy, max_new_tokens=2)
    data = to_npz(result)
    meta, layers = read_npz(data)
    assert meta["result"]["new_token_ids"] == result.new_token_ids and meta["policy"]["name"] == "kvcrush"
    assert len(layers) == len(result.trace.layers)
    for layer, arrays, scalars in zip(result.trace.layers, layers, meta["layers"], strict=True):
        assert scalars["budget"] == layer.budget and scalars["importance_kept"] == layer.importance_kept
        assert np.array_equal(arrays["kept"], layer.kept.numpy())
        assert np.allclose(arrays["scores"], layer.scores.numpy())
        bits = np.unpackbits(arrays["packed_signatures"], axis=-1, bitorder="little")[:, : scalars["signature_width"]]
        assert np.array_equal(bits.astype(bool), layer.signatures.numpy())
        cuts = np.cumsum(arrays["bucket_sizes"])[:-1]
        buckets = np.split(arrays["bucket_members"], cuts)
        assert [b.tolist() for b in buckets] == [b.tolist() for b in layer.buckets]
        weights = np.split(arrays["merge_weight_rows"], cuts, axis=1)
        assert all(np.allclose(w, t.numpy()) for w, t in zip(weights, layer.merge_weights, strict=True))
    assert len(data) < len(json.dumps(to_jsonable(result))) / 4


def test_a_selection_exports_without_a_result(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt[:1500])
    trace = prepared.select(kvcrush.make_policy("snapkv", budget=0.5))
    meta, layers = read_npz(to_npz(trace))
    assert "result" not in meta and meta["n_context"] == trace.n_context
    assert torch.equal(torch.from_numpy(layers[0]["kept"]), trace.layers[0].kept)
