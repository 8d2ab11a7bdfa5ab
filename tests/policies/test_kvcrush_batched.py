"""KVCrush's selection over all layers at once equals layer-by-layer selection, field for field."""

from __future__ import annotations

import pytest
import torch

import kvcrush
from kvcrush.crush import ANCHOR_MODES
from kvcrush.policies import make_policy
from kvcrush.trace import LayerTrace

QUESTION = "What is the essay about?"
FIELDS = ("kept", "scores", "signatures", "anchor", "distances", "candidates", "representatives", "anchors",
          "unit_anchor", "bucket_anchor")


@pytest.fixture(scope="module", params=[False, True], ids=["agnostic", "query-aware"])
def prepared(request, tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt, question=QUESTION, query_aware=request.param)


def _same(batched: LayerTrace, alone: LayerTrace) -> None:
    for name in FIELDS:
        a, b = getattr(batched, name), getattr(alone, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert len(batched.buckets) == len(alone.buckets)
    assert all(torch.equal(a, b) for a, b in zip(batched.buckets, alone.buckets, strict=True))
    for name in ("budget", "sink", "recent", "importance", "crush", "crush_used", "crush_fraction", "protected",
                 "granularity"):
        assert getattr(batched, name) == getattr(alone, name), name


@pytest.mark.parametrize("anchor", ANCHOR_MODES)
@pytest.mark.parametrize("options", [{"base": "snapkv"}, {"base": "h2o", "signature_heads": "kv"},
                                     {"base": "tova", "crush_fraction": 0.5}, {"base": "snapkv", "budget": 0.1},
                                     {"base": "snapkv", "head_reduction": "all"}])
def test_batched_selection_equals_layer_by_layer(prepared, anchor, options):
    options = {"budget": 0.3, **options}
    policy = make_policy("kvcrush", anchor=anchor, **options)
    scores, _ = prepared.scores(policy)
    batched = policy._select_layers_batched(scores, prepared.layers, None)
    assert batched is not None, "the paper's configuration takes the batched path"
    alone = [policy.select(s, layer) for s, layer in zip(scores, prepared.layers, strict=True)]
    for a, b in zip(batched, alone, strict=True):
        _same(a, b)
    assert prepared.select(policy).layers[0].representatives.numel() == alone[0].crush_used  # select uses it


def test_other_configurations_go_layer_by_layer(prepared):
    for options in ({"granularity": "block", "block_size": 4}, {"anchors": 2}, {"representative": "best"},
                    {"merge": "values"}, {"crush_fraction": 0.0}):
        policy = make_policy("kvcrush", budget=0.3, **options)
        scores, _ = prepared.scores(policy)
        assert policy._select_layers_batched(scores, prepared.layers, None) is None, options
    policy = make_policy("kvcrush", budget=0.3)
    scores, _ = prepared.scores(policy)
    assert policy._select_layers_batched(scores, prepared.layers, [0.2, 0.3]) is None  # per-layer splits


def test_fewer_candidates_than_representatives_falls_back(prepared):
    policy = make_policy("kvcrush", budget=0.9, crush_fraction=0.5)
    scores, _ = prepared.scores(policy)
    assert policy._select_layers_batched(scores, prepared.layers, None) is None
    alone = [policy.select(s, layer) for s, layer in zip(scores, prepared.layers, strict=True)]
    for a, b in zip(policy.select_layers(scores, prepared.layers), alone, strict=True):
        _same(a, b)
