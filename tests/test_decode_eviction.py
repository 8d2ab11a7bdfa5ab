"""Decode-time eviction: the cache stays at the budget while a long answer is generated."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import kvcrush
from kvcrush.compat import cache_kwargs
from kvcrush.decoding import extend, greedy_decode, stop_ids
from kvcrush.errors import PolicyError
from kvcrush.explain.decode_cache import timeline
from kvcrush.kvcache import compressed_copy
from kvcrush.policies import make_policy

T, K, NEW = 128, 32, 256


@pytest.fixture(scope="module")
def prepared(tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt)


@pytest.mark.parametrize("name,options", [("snapkv", {}), ("kvcrush", {}), ("tova", {}), ("knorm", {}),
                                          ("kvcrush", {"base": "tova", "granularity": "block", "block_size": 8})])
def test_the_cache_never_holds_more_than_budget_plus_interval(tiny_lm, prepared, name, options):
    result = prepared.generate(make_policy(name, budget=T, decode_interval=K, **options), max_new_tokens=NEW)
    assert len(result.new_token_ids) == NEW  # the random model never stops early on this prompt
    assert result.peak_cache_tokens <= T + K
    assert result.decode_evictions and all(e.before <= T + K for e in result.decode_evictions)
    assert all(e.kept <= T and e.evicted.shape == (2, e.before - e.kept) for e in result.decode_evictions)
    first = result.decode_evictions[0]  # before it: the kept prompt, the appended tail, the tokens fed back
    assert result.n_appended == len(prepared.appended_ids)
    assert first.before == result.trace.layers[first.layer].kept.shape[1] + result.n_appended + first.step
    assert result.kv_bytes_final <= (T + K) * tiny_lm.kv_bytes_per_token()
    plain = prepared.generate(make_policy(name, budget=T, **options), max_new_tokens=NEW)
    assert plain.kv_bytes_final > 2 * result.kv_bytes_final  # without it the cache grows with the answer
    lines = {layer: timeline(result, layer) for layer in {e.layer for e in result.decode_evictions}}
    for eviction in result.decode_evictions:
        line = lines[eviction.layer]
        held = torch.from_numpy(line.kept[line.steps.index(eviction.step)])  # replayed from the recorded deltas
        assert held.shape[1] == eviction.kept
        assert (held.diff(dim=1) > 0).all()  # each head: distinct positions, in order
        assert not any(set(h.tolist()) & set(e.tolist()) for h, e in zip(held, eviction.evicted, strict=True))
        newest = prepared.n_budgeted + len(prepared.appended_ids) + eviction.step - 1  # the token just forwarded
        assert int(held.max()) <= newest
        if name != "knorm":  # a recent window (TOVA: the last token) keeps the newest token
            assert int(held.max()) == newest


def test_the_cache_holds_the_keys_of_the_positions_it_records(tiny_lm, prepared):
    """Layer 0's keys depend only on each token and its position, so one plain forward recomputes them."""
    policy = make_policy("kvcrush", budget=T, decode_interval=K)
    trace = prepared.select(policy)
    model = tiny_lm.model
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], model.config)
    evictor = prepared._evictor(policy, cache, trace)
    with evictor.capturing():
        logits = extend(model, cache, prepared.appended_ids, prepared.n_budgeted, last_only=True)[-1]
    evictor.append_positions(prepared.n_budgeted, len(prepared.appended_ids))
    position = len(prepared.encoded.all_ids)
    with evictor.capturing():
        new_ids = greedy_decode(model, cache, logits, position, NEW, stop_ids(model, tiny_lm.tokenizer),
                                after_forward=lambda n: evictor.after_forward(n, position + n - 1))
    assert new_ids == prepared.generate(policy, max_new_tokens=NEW).new_token_ids  # what generate does
    assert evictor.evictions
    ids = prepared.encoded.all_ids + new_ids[:-1]  # the last token was never forwarded
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), **cache_kwargs(model, full), use_cache=True, logits_to_keep=1)
    positions = evictor.positions[0]
    for head in range(tiny_lm.kv_heads):
        torch.testing.assert_close(cache.layers[0].keys[0, head], full.layers[0].keys[0, head, positions[head]],
                                   atol=1e-4, rtol=1e-4)


def test_interval_zero_is_todays_behaviour(tiny_lm, prepared):
    off = prepared.generate(make_policy("snapkv", budget=T, decode_interval=0), max_new_tokens=24)
    default = prepared.generate(make_policy("snapkv", budget=T), max_new_tokens=24)
    assert off.new_token_ids == default.new_token_ids and not off.decode_evictions
    grown = T + len(prepared.appended_ids) + len(off.new_token_ids) - 1
    assert off.kv_bytes_final == grown * tiny_lm.kv_bytes_per_token()


@pytest.mark.parametrize("options", [{"name": "h2o"}, {"name": "kvcrush", "base": "h2o"}])
def test_scorers_that_need_every_query_refuse_decode_eviction(options):
    with pytest.raises(PolicyError, match="cannot evict while decoding"):
        make_policy(budget=T, decode_interval=K, **options)
