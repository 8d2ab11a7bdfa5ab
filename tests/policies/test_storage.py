"""Every policy at every storage precision, and budgets in bytes (issue 13), on a real (tiny) model."""

from __future__ import annotations

import pytest
import torch

import kvcrush
from kvcrush.budget import plan_budget_bytes
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.policies import POLICIES, make_policy
from kvcrush.quant import KV_BITS
from kvcrush.quantized_cache import QuantizedKVLayer
from tests.conftest import kvpress_or_skip

QUESTION = "What is the essay about?"
CASES = [(name, {}) for name in POLICIES if name != "kvcrush"] + [
    ("kvcrush", {"base": "snapkv"}), ("kvcrush", {"base": "h2o", "representative_bits": 2}),
    ("kvcrush", {"base": "snapkv", "granularity": "block", "block_size": 4, "representative_bits": 4}),
]


@pytest.fixture(scope="module")
def prepared(tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt[:1200], question=QUESTION)


@pytest.mark.parametrize("name, options", CASES, ids=lambda case: str(case))
def test_every_policy_at_every_precision_keeps_the_same_rows_in_fewer_bytes(prepared, name, options):
    results = {bits: prepared.generate(make_policy(name, budget=0.3, kv_bits=bits, **options), 4) for bits in KV_BITS}
    reference = results[16]
    sizes = [results[bits].kv_bytes_after for bits in KV_BITS]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)  # 16 > 8 > 4 > 2
    for bits, result in results.items():
        assert result.timings.decode_tokens >= 1
        for layer, base_layer in zip(result.trace.layers, reference.trace.layers, strict=True):
            assert torch.equal(layer.kept, base_layer.kept)  # storage never changes the selection
            if bits == 16 and options.get("representative_bits") is None:
                assert layer.row_bits is None
                continue
            assert layer.row_bits.shape == layer.kept.shape
            assert layer.row_bits[:, -8:].eq(16).all()  # the residual window
            rep_bits = options.get("representative_bits") or bits
            representatives = layer.representative_tokens()
            if representatives.numel():
                at = torch.isin(layer.kept, representatives)
                assert layer.row_bits[at].eq(rep_bits).sum() >= at.sum() - 8 * layer.kept.shape[0]


def test_stored_layers_hold_what_the_trace_says(prepared):
    policy = make_policy("kvcrush", budget=0.3, kv_bits=8, representative_bits=4)
    trace = prepared.select(policy)
    cache = prepared._gather(trace, policy)
    for layer, stored in zip(trace.layers, cache.layers, strict=True):
        assert isinstance(stored, QuantizedKVLayer)
        assert torch.equal(stored.row_bits(), layer.row_bits)
        assert stored.get_seq_length() == layer.kept.shape[1]


@pytest.mark.parametrize("query_aware", [False, True])
def test_quantized_runs_in_both_query_modes_and_with_decode_time_eviction(tiny_lm, essay_prompt, query_aware):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt[:900], question=QUESTION, query_aware=query_aware)
    policy = make_policy("kvcrush", base="tova", budget=0.3, kv_bits=4, representative_bits=2, decode_interval=2)
    result = prepared.generate(policy, 12)
    assert result.decode_evictions, "decode-time eviction ran"
    for eviction in result.decode_evictions:  # KVCrush's representatives (stored at 2 bits) are recorded
        assert eviction.representatives is not None and eviction.representatives.shape[1] > 0
    plain = prepared.generate(make_policy("kvcrush", base="tova", budget=0.3, decode_interval=2), 12)
    assert plain.peak_cache_tokens == result.peak_cache_tokens
    assert result.kv_bytes_final < plain.kv_bytes_final / 3


def _layer_bytes(result) -> list[int]:
    return [int(result.kv_bytes_after) // len(result.trace.layers)] * len(result.trace.layers)


@pytest.mark.parametrize("name, options", [("snapkv", {"kv_bits": 4}), ("h2o", {"kv_bits": 8}),
                                           ("kvcrush", {"kv_bits": 8, "representative_bits": 2}),
                                           ("kvcrush", {"kv_bits": 16, "representative_bits": 4}),
                                           ("streaming", {})])
def test_budget_bytes_is_never_exceeded(prepared, tiny_lm, name, options):
    budget_bytes = 5000
    result = prepared.generate(make_policy(name, budget_bytes=budget_bytes, **options), 0,
                               reference_ids=[1, 2, 3])
    heads = tiny_lm.config.num_key_value_heads
    per_head = result.kv_bytes_after / (len(result.trace.layers) * heads)
    assert per_head <= budget_bytes
    assert per_head > 0.8 * budget_bytes  # and it is used


def test_cheaper_representatives_buy_more_of_them_at_equal_bytes(prepared):
    same = prepared.select(make_policy("kvcrush", budget_bytes=5000, kv_bits=8))
    cheaper = prepared.select(make_policy("kvcrush", budget_bytes=5000, kv_bits=8, representative_bits=2))
    for a, b in zip(same.layers, cheaper.layers, strict=True):
        assert b.crush_used > a.crush_used
        assert b.importance <= a.importance


def test_budget_bytes_at_16_bits_equals_the_token_budget(prepared, tiny_lm):
    tokens = 40
    row = 2 * (tiny_lm.config.hidden_size // tiny_lm.config.num_attention_heads) * 4  # fp32 key + value
    by_tokens = prepared.select(make_policy("kvcrush", budget=tokens))
    by_bytes = prepared.select(make_policy("kvcrush", budget_bytes=tokens * row))
    for a, b in zip(by_tokens.layers, by_bytes.layers, strict=True):
        assert torch.equal(a.kept, b.kept)


def test_plan_budget_bytes_splits_the_middle_in_bytes():
    plan = plan_budget_bytes(1000, 100 * 10, sink=4, recent=6, crush_fraction=0.5, row_bytes=10,
                             representative_row_bytes=5)
    # 90 rows of middle bytes at 10: half the bytes (450) buy 90 representatives at 5 bytes, the rest 45 rows.
    assert (plan.sink, plan.recent, plan.importance, plan.crush, plan.budget) == (4, 6, 45, 90, 145)
    assert plan.representative_cost == 0.5
    assert plan_budget_bytes(50, 10**6, 4, 6, 0.5, 10, 5).no_op
    # Cheap representatives would buy more rows than there are, yet every row does not fit at 10 bytes:
    # all rows but one, as many as fit at full cost (89 * 10 + 10 * 1 = 900 bytes).
    nearly = plan_budget_bytes(100, 900, 0, 0, 0.5, 10, 1)
    assert (nearly.budget, nearly.importance, nearly.crush, nearly.no_op) == (99, 89, 10, False)
    clipped = plan_budget_bytes(1000, 50, 4, 6, 0.5, 10, 5)  # 5 rows fit: sink first, as plan_budget clips
    assert (clipped.budget, clipped.sink, clipped.recent, clipped.importance, clipped.crush) == (5, 4, 1, 0, 0)
    with pytest.raises(BudgetError, match="less than one token"):
        plan_budget_bytes(1000, 9, 4, 6, 0.5, 10, 5)


def test_bad_storage_options_are_refused():
    with pytest.raises(ValueError, match="kv_bits must be one of"):
        make_policy("snapkv", kv_bits=3)
    with pytest.raises(ValueError, match="representative_bits must be one of"):
        make_policy("kvcrush", representative_bits=5)
    with pytest.raises(BudgetError, match="budget_bytes"):
        make_policy("snapkv", budget_bytes=0)
    with pytest.raises(PolicyError, match="kvcrush.prepare"):
        kvpress_or_skip("kvcrush.integrations.kvpress").as_press(make_policy("snapkv", kv_bits=4))
