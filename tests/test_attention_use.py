"""Recording what the answer attends to: exact against eager attention, cheap, and only when asked."""

from __future__ import annotations

import pytest
import torch

import kvcrush
from kvcrush.attention import attention_modules
from kvcrush.attention_use import ANSWER_C, CATEGORIES, QUESTION_C, REPRESENTATIVE_C, AttentionRecorder
from kvcrush.compat import cache_kwargs
from kvcrush.explain.span_fate import layer_status
from kvcrush.kvcache import compressed_copy

QUESTION = "Who wrote this essay?"

STATUS_TO_CATEGORY = {0: None, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}  # kvcrush.trace codes -> CATEGORIES


@pytest.fixture(scope="module")
def prepared(tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt, question=QUESTION)


def _eager_first_step(prepared, trace) -> torch.Tensor:
    """`[layers, C]` category shares of the last tail token's attention, from the model's own eager attention."""
    lm = prepared.lm
    kept = [None if layer.no_op else layer.kept for layer in trace.layers]
    cache = compressed_copy(prepared.cache, kept, lm.model.config)
    tail = prepared.appended_ids
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = lm.model(input_ids=torch.tensor([tail]), **cache_kwargs(lm.model, cache), output_attentions=True,
                              position_ids=torch.arange(prepared.n_budgeted, prepared.n_budgeted + len(tail))[None])
    finally:
        lm.model.set_attn_implementation("sdpa")
    rows = []
    for layer, attention in zip(trace.layers, output.attentions, strict=True):
        probs = attention[0, :, -1]  # [query_heads, slots]: the last tail token's query
        group = probs.shape[0] // layer.kept.shape[0]
        shares = torch.zeros(len(CATEGORIES))
        for head in range(probs.shape[0]):
            kv = head // group
            status = layer_status(layer, kv)
            held = layer.kept[kv].tolist() if not layer.no_op else list(range(layer.n_tokens))
            for slot, position in enumerate(held):
                shares[STATUS_TO_CATEGORY[int(status[position])]] += probs[head, slot]
            shares[QUESTION_C] += probs[head, len(held):].sum()
        rows.append(shares / probs.shape[0])
    return torch.stack(rows)


@pytest.mark.parametrize("options", [{}, {"granularity": "block", "block_size": 8}, {"base": "h2o"}])
def test_the_first_token_matches_eager_attention_over_the_compressed_cache(prepared, options):
    policy = kvcrush.make_policy("kvcrush", 0.3, **options)
    recorder = AttentionRecorder()
    result = prepared.generate(policy, max_new_tokens=5, observer=recorder)
    use = recorder.result
    expected = _eager_first_step(prepared, result.trace)
    torch.testing.assert_close(use.shares[0], expected, atol=2e-5, rtol=1e-4)
    assert use.shares[0, :, REPRESENTATIVE_C].sum() > 0  # representatives are attended to at all here


def test_shares_add_up_and_track_the_cache(prepared):
    recorder = AttentionRecorder()
    result = prepared.generate(kvcrush.make_policy("kvcrush", 0.3), max_new_tokens=6, observer=recorder)
    use = recorder.result
    steps = len(result.new_token_ids)  # token 0 from the tail's last query, tokens 1.. from the answer's
    assert use.tokens.tolist() == list(range(steps))
    assert use.shares.shape == (steps, len(result.trace.layers), len(CATEGORIES))
    torch.testing.assert_close(use.shares.sum(dim=-1), torch.ones(steps, len(result.trace.layers)))
    torch.testing.assert_close(use.layer_position.sum(dim=-1), torch.ones(len(result.trace.layers)))
    layer = result.trace.layers[0]
    slots = layer.kept.shape[1] + len(prepared.appended_ids)
    reps = layer.representatives.numel()
    assert use.cache_shares[0, 0, REPRESENTATIVE_C].item() == pytest.approx(reps / slots)
    # The answer's own tokens enter the cache one per step.
    assert use.cache_shares[0, 0, ANSWER_C] == 0 and use.cache_shares[-1, 0, ANSWER_C] > 0
    top = use.top_prompt_tokens(5)
    assert len(top) == 5 and all(0 <= p < prepared.n_budgeted for p, _ in top)
    assert top == sorted(top, key=lambda item: -item[1])


def test_recording_changes_nothing_and_leaves_no_hooks(prepared):
    policy = kvcrush.make_policy("kvcrush", 0.3)
    modules = attention_modules(prepared.lm.model)
    before = [len(module._forward_hooks) for module in modules]
    plain = prepared.generate(policy, max_new_tokens=6)
    recorder = AttentionRecorder()
    recorded = prepared.generate(policy, max_new_tokens=6, observer=recorder)
    assert recorded.new_token_ids == plain.new_token_ids
    assert [len(module._forward_hooks) for module in modules] == before
    assert prepared.lm.model.config._attn_implementation == "sdpa"  # the model's own implementation is back
    assert not any(hasattr(module, "_kvcrush_attention_use") for module in modules)
    assert recorder.result is not None


def test_decode_time_eviction_is_followed(prepared):
    recorder = AttentionRecorder()
    result = prepared.generate(kvcrush.make_policy("tova", 64, decode_interval=4), max_new_tokens=12,
                               observer=recorder)
    use = recorder.result
    assert result.decode_evictions and use.n_steps == len(result.new_token_ids)
    torch.testing.assert_close(use.shares.sum(dim=-1), torch.ones(use.shares.shape[:2]))
    assert use.shares[..., REPRESENTATIVE_C].sum() == 0  # TOVA has no representatives
    torch.testing.assert_close(use.layer_position.sum(dim=-1), torch.ones(len(result.trace.layers)))
    torch.testing.assert_close(use.cache_shares.sum(dim=-1), torch.ones(use.shares.shape[:2]))


def test_layers_of_different_lengths_record_the_answer_only(prepared):
    """PyramidKV's layers hold different numbers of rows, so the tail goes in one token at a time."""
    recorder = AttentionRecorder()
    result = prepared.generate(kvcrush.make_policy("pyramidkv", 0.3), max_new_tokens=5, observer=recorder)
    use = recorder.result
    assert use.tokens.tolist() == list(range(len(result.new_token_ids)))
    torch.testing.assert_close(use.shares.sum(dim=-1), torch.ones(use.shares.shape[:2]))
    lengths = {layer.kept.shape[1] for layer in result.trace.layers}
    assert len(lengths) > 1


def test_packaged_model_records_a_needle_answer(packaged_lm):
    from kvcrush.data import needle_example

    example = needle_example(packaged_lm.tokenizer, 600, depth=0.4, seed=2)
    prepared = kvcrush.prepare(packaged_lm, example.context, question=example.question, query_aware=True)
    policy = kvcrush.make_policy("kvcrush", 0.5)
    plain = prepared.generate(policy, max_new_tokens=24)
    recorder = AttentionRecorder()
    recorded = prepared.generate(policy, max_new_tokens=24, observer=recorder)
    use = recorder.result
    assert recorded.text == plain.text
    assert use.shares.shape == (len(recorded.new_token_ids), packaged_lm.n_layers, len(CATEGORIES))
    torch.testing.assert_close(use.shares.sum(dim=-1), torch.ones(use.shares.shape[:2]))
    assert use.overall()[QUESTION_C] > 0
