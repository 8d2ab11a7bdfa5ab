"""Kept-set overlap between KV heads (`kvcrush.metrics.head_agreement`), checked against sets built by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import kvcrush
from kvcrush.metrics import head_agreement


@pytest.fixture(scope="module")
def traces():
    lm = kvcrush.load_model("random:tiny", device="cpu")
    prepared = kvcrush.prepare(lm, "Alpha beta gamma, delta epsilon zeta. " * 30)
    return {name: prepared.select(kvcrush.make_policy(name, 0.3)) for name in ("kvcrush", "snapkv", "random")}


@pytest.mark.parametrize("name", ["kvcrush", "snapkv", "random"])
def test_kept_share_and_mean_jaccard_with_the_other_heads(traces, name):
    trace = traces[name]
    kept, agreement = head_agreement(trace)
    heads = trace.layers[0].kept.shape[0]
    assert kept.shape == agreement.shape == (len(trace.layers), heads)
    for index, layer in enumerate(trace.layers):
        sets = [set(layer.kept[head].tolist()) for head in range(heads)]
        assert np.allclose(kept[index], [len(s) / layer.n_tokens for s in sets])
        for head in range(heads):
            others = [len(sets[head] & sets[o]) / len(sets[head] | sets[o]) for o in range(heads) if o != head]
            assert agreement[index, head] == pytest.approx(sum(others) / len(others))


def test_heads_that_keep_the_same_tokens_agree_fully(traces):
    trace = traces["snapkv"]
    first = trace.layers[0]
    same = dataclasses.replace(first, kept=first.kept[:1].expand_as(first.kept).clone())
    kept, agreement = head_agreement(dataclasses.replace(trace, layers=[same]))
    assert np.allclose(agreement, 1.0) and np.allclose(kept, kept[0, 0])
