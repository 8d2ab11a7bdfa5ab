"""The decoding helpers: ragged-layer forwards, batched reference scoring, line-end stops, teacher forcing."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import kvcrush
from kvcrush.decoding import _forward, extend, greedy_decode, greedy_decode_batch, newline_ids, stop_ids
from kvcrush.kvcache import cache_lengths, compressed_copy, stack_caches
from kvcrush.prompts import EncodedPrompt, encode_prompt

QUESTION = "What is the essay about?"


@pytest.fixture(scope="module")
def prepared(tiny_lm, essay_prompt):
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, QUESTION)
    return kvcrush.prepare_encoded(tiny_lm, encoded)


def _pyramid_cache(prepared):
    trace = prepared.select(kvcrush.make_policy("pyramidkv", budget=0.3))
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], prepared.lm.model.config)
    assert len(set(cache_lengths(cache))) > 1  # the case the ragged path exists for
    return cache


def test_ragged_layers_take_one_forward_equal_to_token_at_a_time(prepared):
    model, ids = prepared.lm.model, prepared.appended_ids + [5, 6, 7]
    one, stepwise = _pyramid_cache(prepared), _pyramid_cache(prepared)
    together = extend(model, one, ids, prepared.n_budgeted)
    apart = torch.cat([_forward(model, stepwise, [token], prepared.n_budgeted + i, 1) for i, token in enumerate(ids)])
    assert together.shape == apart.shape == (len(ids), model.config.vocab_size)
    torch.testing.assert_close(together, apart, rtol=1e-4, atol=1e-4)
    assert cache_lengths(one) == cache_lengths(stepwise)
    assert model.config._attn_implementation == "sdpa"  # restored after the ragged forward
    tail = extend(model, _pyramid_cache(prepared), ids, prepared.n_budgeted, keep=2)
    torch.testing.assert_close(tail, together[-2:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("names", [("snapkv", "h2o", "knorm", "streaming"), ("pyramidkv", "tova")])
def test_score_many_equals_one_generate_per_policy(prepared, names):
    reference = [11, 12, 13, 14]
    policies = [kvcrush.make_policy(name, budget=budget) for name in names for budget in (0.2, 0.5)]
    policies.append(kvcrush.make_policy("kvcrush", budget=0.4, granularity="block", block_size=4))
    batched = prepared.score_many(policies, reference, batch_size=3)
    for policy, result in zip(policies, batched, strict=True):
        single = prepared.generate(policy, 0, reference_ids=reference)
        assert result.kv_bytes_after == single.kv_bytes_after and result.kv_bytes_before == single.kv_bytes_before
        assert result.reference.greedy_match == single.reference.greedy_match, policy.name
        assert result.reference.token_nll == pytest.approx(single.reference.token_nll, abs=1e-4)
        assert result.reference_nll == pytest.approx(single.reference_nll, abs=1e-4)
        assert result.trace.policy == policy.describe() and result.text == ""


@pytest.mark.parametrize("stop_at_newline", [False, True])
def test_generate_many_equals_one_generate_per_policy(prepared, stop_at_newline):
    reference = [11, 12, 13]
    policies = [kvcrush.make_policy(name, budget=budget) for name in ("snapkv", "h2o", "pyramidkv")
                for budget in (0.2, 0.5)]
    policies += [kvcrush.make_policy("kvcrush", budget=0.4, kv_bits=4),  # decoded alone: stored quantized
                 kvcrush.make_policy("tova", budget=0.3, decode_interval=2)]  # decoded alone: evicts meanwhile
    batched = prepared.generate_many(policies, 6, reference, stop_at_newline=stop_at_newline, batch_size=2)
    for policy, result in zip(policies, batched, strict=True):
        single = prepared.generate(policy, 6, reference_ids=reference, stop_at_newline=stop_at_newline)
        assert result.new_token_ids == single.new_token_ids and result.text == single.text, policy.describe()
        assert result.timings.decode_tokens == len(single.new_token_ids) and result.timings.decode_s > 0
        assert (result.kv_bytes_after, result.kv_bytes_final) == (single.kv_bytes_after, single.kv_bytes_final)
        assert result.reference_nll == pytest.approx(single.reference_nll, abs=1e-4)
        assert result.reference.greedy_match == single.reference.greedy_match
        assert result.trace.policy == policy.describe() and result.n_appended == single.n_appended


def test_greedy_decode_batch_stops_each_row_on_its_own(prepared):
    """A row that stops keeps its ids; the others go on (the stop set is every id one row emits first)."""
    policies = [kvcrush.make_policy("snapkv", budget=0.3), kvcrush.make_policy("knorm", budget=0.3)]
    alone = [prepared.generate(policy, 5).new_token_ids for policy in policies]
    first = alone[0][0]
    stops = {first} if first not in alone[1] else set()
    caches = [compressed_copy(prepared.cache, [layer.kept for layer in prepared.select(policy).layers],
                              prepared.lm.model.config) for policy in policies]
    decoded = greedy_decode_batch(prepared.lm.model, caches, prepared.appended_ids, prepared.n_budgeted, 5, stops)
    assert caches == []  # the single copies were handed over
    assert decoded.new_ids[0] == (alone[0][:1] if stops else alone[0])
    assert decoded.new_ids[1] == alone[1]


def test_stack_caches_keeps_each_row(prepared):
    caches = [compressed_copy(prepared.cache, [layer.kept for layer in prepared.select(
        kvcrush.make_policy(name, budget=0.3)).layers], prepared.lm.model.config) for name in ("snapkv", "knorm")]
    stacked = stack_caches(caches, prepared.lm.model.config)
    for index, layer in enumerate(stacked.layers):
        assert torch.equal(layer.keys[1], caches[1].layers[index].keys[0])
        assert torch.equal(layer.values[0], caches[0].layers[index].values[0])


def test_teacher_forced_greedy_flags_equal_greedy_decoding(prepared):
    """`ReferenceScores.greedy` is true exactly when greedy decoding writes the reference first."""
    policy = kvcrush.make_policy("snapkv", budget=0.3)
    decoded = prepared.generate(policy, 6).new_token_ids
    assert prepared.generate(policy, 0, reference_ids=decoded).reference.greedy
    changed = decoded[:3] + [decoded[3] + 1] + decoded[4:]
    scores = prepared.generate(policy, 0, reference_ids=changed).reference
    assert not scores.greedy and scores.greedy_match[:3] == (True, True, True) and not scores.greedy_match[3]
    assert scores.span_greedy(0, 3) and not scores.span_greedy(0, 4)


def test_answers_can_stop_at_the_end_of_their_line(tiny_lm):
    stops = newline_ids(tiny_lm.tokenizer)
    newline = tiny_lm.tokenizer.encode("\n", add_special_tokens=False)[0]
    assert newline in stops and len(stops) < len(tiny_lm.tokenizer) // 10
    model = tiny_lm.model
    cache = DynamicCache(config=model.config)
    logits = torch.full((model.config.vocab_size,), -1e9)
    logits[newline] = 0.0  # the first greedy token is a line break
    ids = greedy_decode(model, cache, logits, 0, 8, stop_ids(model, tiny_lm.tokenizer) | stops)
    assert ids == [newline]


def test_one_line_answers_from_a_prepared_prompt(prepared):
    result = prepared.generate(kvcrush.make_policy("snapkv", budget=0.3), 24, stop_at_newline=True)
    stops = newline_ids(prepared.lm.tokenizer)
    assert all(token not in stops for token in result.new_token_ids[:-1])


@pytest.mark.parametrize("n_reference", [1, 10])
def test_scoring_without_a_tail_is_batched_like_one_at_a_time(tiny_lm, essay_prompt, n_reference):
    """The likelihood task: no tail, so the prefill's last logits predict the first reference token and one
    forward per batch holds the rest of the reference (none for a one-token reference)."""
    ids = tiny_lm.tokenizer.encode(essay_prompt, add_special_tokens=False)[:200]
    prepared = kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(ids[:150]))
    reference = ids[150:150 + n_reference]
    policies = [kvcrush.make_policy(name, budget=0.5) for name in ("snapkv", "knorm", "h2o", "pyramidkv")]
    batched = prepared.score_many(policies, reference, batch_size=2)
    for policy, result in zip(policies, batched, strict=True):
        single = prepared.generate(policy, 0, reference_ids=reference)
        assert result.reference.greedy_match == single.reference.greedy_match, policy.name
        assert result.reference.token_nll == pytest.approx(single.reference.token_nll, abs=1e-4)
        assert result.kv_bytes_after == single.kv_bytes_after and result.n_appended == 0



def test_stop_ids_assembles_end_tokens_given_ids_and_line_breaks_in_one_place(tiny_lm):
    model, tokenizer = tiny_lm.model, tiny_lm.tokenizer
    ends = stop_ids(model, tokenizer)
    assert tokenizer.eos_token_id in ends
    assert stop_ids(model, tokenizer, eos_token_ids=7) == {7}
    assert stop_ids(model, tokenizer, eos_token_ids=[7, 9]) == {7, 9}
    with_lines = stop_ids(model, tokenizer, stop_at_newline=True)
    assert with_lines == ends | newline_ids(tokenizer) and len(with_lines) > len(ends)
    assert stop_ids(model, None, stop_at_newline=True) == stop_ids(model)  # no tokenizer, no line-break ids
