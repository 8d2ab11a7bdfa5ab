"""generate() on a tiny random Llama: equals model.generate when nothing is evicted, shrinks the real cache."""

import pytest
import torch

import kvcrush
from kvcrush.decoding import greedy_decode, stop_ids
from kvcrush.kvcache import cache_bytes, cache_lengths, compressed_copy
from kvcrush.policies import POLICIES, make_policy
from kvcrush.prompts import encode_prompt

ALL_POLICIES = [name for name in POLICIES if name != "full"]


def hf_greedy(lm, ids: list[int], max_new_tokens: int) -> list[int]:
    output = lm.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                               eos_token_id=2, pad_token_id=2)
    return output[0, len(ids):].tolist()


def test_full_generation_equals_model_generate(tiny_lm, essay_prompt):
    result = kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=12, question="Who wrote this?")
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, "Who wrote this?")
    assert result.new_token_ids == hf_greedy(tiny_lm, encoded.all_ids, 12)
    assert result.kv_bytes_after == result.kv_bytes_before


def test_compressing_path_with_a_budget_above_n_also_equals_model_generate(tiny_lm, essay_prompt):
    """Context then question in separate forwards, positions passed explicitly: same tokens as HF."""
    policy = make_policy("snapkv", budget=100_000)
    result = kvcrush.generate(tiny_lm, essay_prompt, policy, max_new_tokens=12, question="Who wrote this?")
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, "Who wrote this?")
    assert result.new_token_ids == hf_greedy(tiny_lm, encoded.all_ids, 12)
    assert all(layer.no_op for layer in result.trace.layers)


@pytest.mark.parametrize("name", ALL_POLICIES)
@pytest.mark.parametrize("query_aware", [False, True])
def test_every_policy_really_shrinks_the_cache(tiny_lm, essay_prompt, name, query_aware):
    options = {"base": "h2o"} if name == "kvcrush" else {}
    policy = make_policy(name, budget=0.3, **options)
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, "Who wrote this?")
    prepared = kvcrush.prepare_encoded(tiny_lm, encoded, query_aware=query_aware)
    trace = prepared.select(policy)
    question = len(encoded.question_ids)
    n_budgeted = encoded.n_context + (question if query_aware else 0)
    assert prepared.n_budgeted == n_budgeted
    t = -(-3 * n_budgeted // 10)
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], tiny_lm.model.config)
    lengths = cache_lengths(cache)
    if name == "pyramidkv":
        assert sum(lengths) == tiny_lm.n_layers * t and lengths[0] > lengths[-1]
    else:
        assert lengths == [t] * tiny_lm.n_layers
    for layer, cached in zip(trace.layers, cache.layers, strict=True):
        assert layer.kept.shape == (tiny_lm.kv_heads, cached.keys.shape[2])
        if query_aware:
            assert layer.protected == question
            assert all(set(range(n_budgeted - question, n_budgeted)) <= set(row) for row in layer.kept.tolist())
    per_token = tiny_lm.kv_bytes_per_token()
    assert cache_bytes(cache) == sum(lengths) * per_token // tiny_lm.n_layers
    assert cache_bytes(prepared.cache) == n_budgeted * per_token
    new_ids = greedy_decode(tiny_lm.model, cache, prepared.last_logits, n_budgeted, 5, stop_ids(tiny_lm.model))
    assert 1 <= len(new_ids) <= 5
    assert cache_lengths(cache)[0] == lengths[0] + len(new_ids) - 1
    assert cache_lengths(prepared.cache) == [n_budgeted] * tiny_lm.n_layers  # the full cache is untouched


def test_kept_rows_are_the_real_cache_rows(tiny_lm, essay_prompt):
    """The cache after eviction holds exactly the keys of the kept positions."""
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, chat_template=False)
    prepared = kvcrush.prepare_encoded(tiny_lm, encoded)
    trace = prepared.select(make_policy("kvcrush", budget=0.25, base="snapkv"))
    small = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], tiny_lm.model.config)
    for layer_trace, full_layer, small_layer in zip(trace.layers, prepared.cache.layers, small.layers, strict=True):
        for head in range(tiny_lm.kv_heads):
            expected = full_layer.keys[0, head, layer_trace.kept[head]]
            torch.testing.assert_close(small_layer.keys[0, head], expected, atol=1e-5, rtol=1e-5)


def test_timings_and_trace_are_filled(tiny_lm, essay_prompt):
    result = kvcrush.generate(tiny_lm, essay_prompt, make_policy("kvcrush", budget=0.25), max_new_tokens=4)
    t = result.timings
    assert t.prefill_s > 0 and t.select_s > 0 and t.score_s > 0 and t.crush_s > 0 and t.decode_s > 0
    assert t.select_s >= t.crush_s and t.policy_s == t.score_s + t.select_s
    assert not t.prefill_reused and not t.score_reused
    assert len(result.trace.token_strings) == result.trace.n_context
    layer = result.trace.layers[0]
    assert layer.signatures is not None and layer.representatives.numel() == layer.crush_used
    data = result.to_dict()
    assert data["trace"]["layers"][0]["kept"] == layer.kept.tolist()
    assert isinstance(result.to_json(), str)


def test_reference_nll_is_lower_for_the_reference_itself(tiny_lm, essay_prompt):
    full = kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=8)
    scored = kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=8, reference_ids=full.new_token_ids)
    shuffled = kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=8,
                                reference_ids=[5000 + i for i in range(8)])
    assert scored.new_token_ids == full.new_token_ids
    assert scored.reference_nll < shuffled.reference_nll


def test_progress_reports_layers_and_tokens(tiny_lm, essay_prompt):
    seen = []
    kvcrush.generate(tiny_lm, essay_prompt, make_policy("snapkv", budget=0.5), max_new_tokens=3,
                     progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert ("prefill", tiny_lm.n_layers, tiny_lm.n_layers) in seen
    assert any(stage == "decode" for stage, _, _ in seen)


def test_should_stop_cancels(tiny_lm, essay_prompt):
    with pytest.raises(kvcrush.RunCancelled):
        kvcrush.generate(tiny_lm, essay_prompt, make_policy("snapkv", budget=0.5), should_stop=lambda: True)
    # the model is usable afterwards (lock released, hooks removed)
    assert kvcrush.generate(tiny_lm, essay_prompt, "full", max_new_tokens=2).new_token_ids


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_refused(tiny_lm, prompt):
    with pytest.raises(kvcrush.PromptError, match="empty"):
        kvcrush.generate(tiny_lm, prompt, "full")


def test_prompt_longer_than_the_context_window_is_refused():
    small = kvcrush.load_model("random:tiny", max_position_embeddings=256)
    with pytest.raises(kvcrush.PromptError, match="at most 256 positions"):
        kvcrush.generate(small, "word " * 400, "full")
