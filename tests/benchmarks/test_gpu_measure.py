"""The GPU check's own assertions fail when they should: on real traces of the tiny random model, altered."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import kvcrush
from benchmarks.gpu_measure import (
    build_policies,
    byte_problems,
    kept_equal,
    kept_problems,
    max_relative_difference,
    policy_specs,
    random_prompt,
)


@pytest.fixture(scope="module")
def prepared(tiny_lm):
    return kvcrush.prepare_encoded(tiny_lm, random_prompt(200, 49152, seed=0))


def _with_kept(trace, layer: int, kept: torch.Tensor):
    layers = list(trace.layers)
    layers[layer] = dataclasses.replace(layers[layer], kept=kept)
    return dataclasses.replace(trace, layers=layers)


def test_every_spec_builds_and_kvcrush_variants_reach_their_options():
    policies = build_policies(None, 0.25, seed=0)
    assert list(policies) == list(policy_specs())
    assert policies["kvcrush:snapkv:alternating:kmeans4"].anchor_mode == "kmeans"
    assert policies["kvcrush:snapkv:alternating:block16"].granularity == "block"
    assert policies["kvcrush:snapkv:alternating@all"].base.head_reduction == "all"
    assert policies["snapkv/decode8"].decode_interval == 8
    with pytest.raises(ValueError, match="Unknown policy label"):
        build_policies(["snapkv", "nope"], 0.25, seed=0)


def test_kept_problems_passes_a_real_trace_and_catches_broken_ones(prepared, tiny_lm):
    trace = prepared.select(kvcrush.make_policy("kvcrush", budget=0.25))
    assert kept_problems(trace, tiny_lm.kv_heads) == []
    kept = trace.layers[0].kept
    assert "shape" in kept_problems(_with_kept(trace, 0, kept[:1]), tiny_lm.kv_heads)[0]
    shuffled = kept.flip(1)
    assert "ascending" in kept_problems(_with_kept(trace, 0, shuffled), tiny_lm.kv_heads)[0]
    outside = kept.clone()
    outside[0, -1] = trace.layers[0].n_tokens
    assert "outside" in kept_problems(_with_kept(trace, 0, outside), tiny_lm.kv_heads)[0]
    assert "budget" in kept_problems(_with_kept(trace, 1, trace.layers[1].kept[:, :-1]), tiny_lm.kv_heads)[0]


def test_byte_problems_checks_bytes_against_the_kept_rows(prepared, tiny_lm):
    policy = kvcrush.make_policy("snapkv", budget=0.25)
    result = prepared.generate(policy, 1)
    args = (prepared.n_budgeted, tiny_lm.kv_bytes_per_token(), tiny_lm.n_layers)
    assert byte_problems(result.trace, result.kv_bytes_before, result.kv_bytes_after, *args, False) == []
    assert byte_problems(result.trace, result.kv_bytes_before, result.kv_bytes_after + 1, *args, False)
    assert byte_problems(result.trace, result.kv_bytes_before - 1, result.kv_bytes_after, *args, False)
    assert byte_problems(result.trace, result.kv_bytes_before, result.kv_bytes_after + 1, *args, True)  # quantized
    quantized = prepared.generate(kvcrush.make_policy("snapkv", budget=0.25, kv_bits=4), 1)
    assert quantized.kv_bytes_after < result.kv_bytes_after
    assert byte_problems(quantized.trace, quantized.kv_bytes_before, quantized.kv_bytes_after, *args, True) == []
    assert byte_problems(quantized.trace, quantized.kv_bytes_before, quantized.kv_bytes_after, *args, False)


def test_parity_comparisons_see_differences(prepared):
    policy = kvcrush.make_policy("snapkv", budget=0.25)
    trace = prepared.select(policy)
    assert kept_equal(trace, prepared.select(policy))
    assert not kept_equal(trace, prepared.select(kvcrush.make_policy("snapkv", budget=0.3)))
    scores, _ = prepared.scores(policy)
    assert max_relative_difference(scores, [s.clone() for s in scores]) == 0.0
    nudged = [s.clone() for s in scores]
    nudged[1] = nudged[1] + 0.01 * nudged[1].abs().max()
    assert max_relative_difference(scores, nudged) == pytest.approx(0.01, rel=1e-3)
