"""Tests for benchmarks.kvpress_runner on a tiny randomly initialised Llama (CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks import kvpress_runner
from benchmarks.kvpress_runner import (
    EAGER_PRESSES,
    KVPRESS_PRESSES,
    make_press,
    prefill_with_press,
    prefill_with_presses,
    press_kept_indices,
    run_press,
    run_presses,
)

N_CONTEXT = 200
N_QUESTION = 12


class IdsTokenizer:
    """Stands in for a tokenizer: the runner only decodes new ids and reads its end token (none here)."""

    eos_token_id = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        intermediate_size=128,
        max_position_embeddings=2048,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def token_ids() -> tuple[list[int], list[int], list[int]]:
    """Context, question and continuation ids (random, avoiding the special ids 0-2)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 49152, (N_CONTEXT + N_QUESTION + 20,), generator=generator).tolist()
    return ids[:N_CONTEXT], ids[N_CONTEXT : N_CONTEXT + N_QUESTION], ids[N_CONTEXT + N_QUESTION :]


def test_ratio_zero_matches_generate(tiny_llama, token_ids):
    context, question, _ = token_ids
    result = run_press(tiny_llama, IdsTokenizer(), "snapkv", 0.0, context, question, max_new_tokens=12)
    with torch.no_grad():
        generated = tiny_llama.generate(
            input_ids=torch.tensor([context + question]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
    assert result.new_token_ids == generated[0, len(context) + len(question) :].tolist()
    assert result.text == " ".join(str(i) for i in result.new_token_ids)
    assert result.kept_per_layer == [N_CONTEXT, N_CONTEXT]
    assert result.kv_bytes_after == result.kv_bytes_before
    assert result.nll is None


def test_ratio_zero_without_question_matches_generate(tiny_llama, token_ids):
    context, _, _ = token_ids
    result = run_press(tiny_llama, None, "knorm", 0.0, context, None, max_new_tokens=6)
    with torch.no_grad():
        generated = tiny_llama.generate(
            input_ids=torch.tensor([context]), max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    assert result.new_token_ids == generated[0, len(context) :].tolist()
    assert result.text == ""


@pytest.mark.parametrize("n_context", [200, 201])
def test_half_compression_halves_the_cache(tiny_llama, token_ids, n_context):
    context, question, _ = token_ids
    context = (context * 2)[:n_context]
    result = run_press(tiny_llama, None, "knorm", 0.5, context, question, max_new_tokens=4)
    assert result.kept_per_layer == [int(n_context * 0.5)] * 2
    # 2 layers x (keys + values) x [1, 2 kv heads, N, 16 head dim] float32
    assert result.kv_bytes_before == 2 * 2 * 2 * n_context * 16 * 4
    assert result.kv_bytes_after / result.kv_bytes_before == pytest.approx(0.5, abs=0.01)
    assert 1 <= len(result.new_token_ids) <= 4
    assert result.prefill_s > 0 and result.tail_s > 0 and result.decode_s > 0


@pytest.mark.parametrize("press_name", sorted(KVPRESS_PRESSES))
def test_every_press_runs_and_scores_a_continuation(tiny_llama, token_ids, press_name):
    context, question, continuation = token_ids
    answer = run_press(tiny_llama, IdsTokenizer(), press_name, 0.25, context, question, max_new_tokens=5)
    assert answer.kept_per_layer == [int(N_CONTEXT * 0.75)] * 2
    assert 1 <= len(answer.new_token_ids) <= 5
    scored = run_press(tiny_llama, None, press_name, 0.25, context, None, continuation_ids=continuation)
    assert scored.nll is not None and math.isfinite(scored.nll) and scored.nll > 0
    assert scored.new_token_ids == [] and scored.text == ""
    # the model is back on sdpa after an eager-only press
    assert tiny_llama.config._attn_implementation == "sdpa"


def test_continuation_nll_at_ratio_zero_equals_full_forward(tiny_llama, token_ids):
    context, _, continuation = token_ids
    result = run_press(tiny_llama, None, "knorm", 0.0, context, None, continuation_ids=continuation)
    with torch.no_grad():
        logits = tiny_llama(input_ids=torch.tensor([context + continuation])).logits[0]
    log_probs = torch.log_softmax(logits[len(context) - 1 : -1].float(), dim=-1)
    expected = -log_probs.gather(-1, torch.tensor(continuation).unsqueeze(-1)).mean().item()
    assert result.nll == pytest.approx(expected, rel=1e-4)


def test_window_size_reaches_snapkv_only():
    assert make_press("snapkv", 0.5, window_size=8).window_size == 8
    assert make_press("snapkv", 0.5).window_size == 64
    assert not hasattr(make_press("knorm", 0.5, window_size=8), "window_size")
    with pytest.raises(ValueError):
        make_press("no-such-press", 0.5)
    with pytest.raises(ValueError):
        make_press("knorm", 1.0)


# Score-based presses only: KVCrushPress is no ScorerPress (its kept sets: tests/integrations).
@pytest.mark.parametrize("press_name", sorted(set(KVPRESS_PRESSES) - {"kvcrush"}))
def test_kept_indices_match_the_compressed_cache(tiny_llama, token_ids, press_name):
    context, _, _ = token_ids
    kept = press_kept_indices(tiny_llama, press_name, 0.5, context)
    full_cache, _, _ = prefill_with_press(tiny_llama, None, context, eager=press_name in EAGER_PRESSES)
    press_cache, _, _ = prefill_with_press(
        tiny_llama, make_press(press_name, 0.5), context, eager=press_name in EAGER_PRESSES
    )
    assert len(kept) == 2
    if press_name == "pyramidkv":  # budgets shrink with depth (136 then 64 here), same total
        assert [layer.keys.shape[2] for layer in press_cache.layers] == [136, 64]
    for indices, full, pressed in zip(kept, full_cache.layers, press_cache.layers, strict=True):
        expected_kept = pressed.keys.shape[2] if press_name == "pyramidkv" else N_CONTEXT // 2
        assert indices.shape == (2, expected_kept)
        assert torch.all(indices[:, 1:] > indices[:, :-1])  # sorted, unique
        # the press's cached keys are exactly the full keys at these indices (in top-k order)
        for head in range(2):
            distances = torch.cdist(
                pressed.keys[0, head], full.keys[0, head], compute_mode="donot_use_mm_for_euclid_dist"
            )
            nearest = distances.argmin(dim=-1)
            assert distances.min(dim=-1).values.max() < 1e-5
            assert torch.equal(nearest.sort().values, indices[head])


def test_kept_indices_knorm_are_smallest_key_norms(tiny_llama, token_ids):
    context, _, _ = token_ids
    kept = press_kept_indices(tiny_llama, "knorm", 0.5, context)
    full_cache, _, _ = prefill_with_press(tiny_llama, None, context)
    for indices, layer in zip(kept, full_cache.layers, strict=True):
        norms = layer.keys[0].norm(dim=-1)  # [kv_heads, tokens]
        expected = norms.topk(N_CONTEXT // 2, dim=-1, largest=False).indices.sort(dim=-1).values
        assert torch.equal(indices, expected)


def test_kept_indices_streaming_keeps_sinks_and_recent(tiny_llama, token_ids):
    context, _, _ = token_ids
    kept = press_kept_indices(tiny_llama, "streaming", 0.5, context, n_sink=4)
    expected = list(range(4)) + list(range(N_CONTEXT - (N_CONTEXT // 2 - 4), N_CONTEXT))
    for indices in kept:
        for head in indices:
            assert head.tolist() == expected


def test_kept_indices_ratio_zero_keeps_everything(tiny_llama, token_ids):
    context, _, _ = token_ids
    for indices in press_kept_indices(tiny_llama, "snapkv", 0.0, context):
        assert indices.shape == (2, N_CONTEXT)
        assert torch.equal(indices[1], torch.arange(N_CONTEXT))


# --- every press and ratio from one shared prefill -----------------------------------------------------------
SHARED_RATIOS = (0.25, 0.5)  # on 2 layers x 200 tokens, PyramidKV falls back to SnapKV at 0.25, is a pyramid at 0.5
ALL_JOBS = [(name, ratio, {}) for name in sorted(KVPRESS_PRESSES) for ratio in SHARED_RATIOS]


@pytest.fixture(scope="module")
def shared_caches(tiny_llama, token_ids):
    context, _, _ = token_ids
    return prefill_with_presses(tiny_llama, ALL_JOBS, context)


@pytest.mark.parametrize("press_name", sorted(KVPRESS_PRESSES))
def test_shared_prefill_leaves_each_press_its_own_pipeline_cache(tiny_llama, token_ids, shared_caches, press_name):
    """Bit-for-bit: the same forward kernels (eager ones for eager presses) and the press's own compress.

    The hidden states a layer's hook sees never depend on earlier layers' compression (a layer's cache is
    read only by that layer's attention, which has already run), so nothing is approximate here.
    """
    context, _, _ = token_ids
    eager = press_name in EAGER_PRESSES
    for ratio in SHARED_RATIOS:
        reference, logits, _ = prefill_with_press(tiny_llama, make_press(press_name, ratio), context, eager=eager)
        shared = shared_caches.caches[(press_name, ratio)]
        assert len(shared.layers) == len(reference.layers) == 2
        for ours, theirs in zip(shared.layers, reference.layers, strict=True):
            assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
        assert torch.equal(shared_caches.forwards[(press_name, ratio)].logits, logits[0, -1].float())
        assert shared.get_seq_length() == reference.get_seq_length()
    assert tiny_llama.config._attn_implementation == "sdpa"


def test_shared_prefill_bookkeeping(shared_caches):
    keys = {(name, ratio) for name, ratio, _ in ALL_JOBS}
    assert set(shared_caches.caches) == set(shared_caches.hook_s) == set(shared_caches.forwards) == keys
    # one forward under sdpa for every press, one under eager for observed attention
    attentions = {key: forward.attention for key, forward in shared_caches.forwards.items()}
    assert attentions == {key: "eager" if key[0] in EAGER_PRESSES else "sdpa" for key in keys}
    assert len({id(forward) for forward in shared_caches.forwards.values()}) == 2
    assert shared_caches.prefill_s == pytest.approx(sum({id(f): f.seconds for f in shared_caches.forwards.values()}
                                                        .values()))
    assert torch.equal(shared_caches.logits, shared_caches.forwards[("knorm", 0.5)].logits)
    assert shared_caches.kv_bytes_before == 2 * 2 * 2 * N_CONTEXT * 16 * 4
    assert all(seconds > 0 for seconds in shared_caches.hook_s.values())
    key = ("snapkv", 0.5)
    assert shared_caches.job_prefill_s(key) == shared_caches.forwards[key].seconds + shared_caches.hook_s[key]


def test_one_forward_without_eager_presses_and_ratio_zero_keeps_the_full_cache(tiny_llama, token_ids):
    context, _, _ = token_ids
    calls = []
    handle = tiny_llama.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        shared = prefill_with_presses(tiny_llama, [("knorm", 0.0, {}), ("snapkv", 0.5, {"window_size": 16}),
                                                   ("keydiff", 0.5, {})], context)
    finally:
        handle.remove()
    assert len(calls) == 1
    full, _, _ = prefill_with_press(tiny_llama, None, context)
    for ours, theirs in zip(shared.caches[("knorm", 0.0)].layers, full.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    windowed, _, _ = prefill_with_press(tiny_llama, make_press("snapkv", 0.5, window_size=16), context)
    for ours, theirs in zip(shared.caches[("snapkv", 0.5)].layers, windowed.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys)
    with pytest.raises(ValueError, match="Duplicate"):
        prefill_with_presses(tiny_llama, [("knorm", 0.5, {}), ("knorm", 0.5, {})], context)


def _same_result(shared, alone):
    assert shared.new_token_ids == alone.new_token_ids and shared.text == alone.text
    assert shared.nll == alone.nll
    assert shared.kept_per_layer == alone.kept_per_layer
    assert (shared.kv_bytes_before, shared.kv_bytes_after) == (alone.kv_bytes_before, alone.kv_bytes_after)


def test_run_presses_answers_like_run_press(tiny_llama, token_ids):
    context, question, _ = token_ids
    jobs = [(name, 0.5, {}) for name in sorted(KVPRESS_PRESSES)]
    results = run_presses(tiny_llama, IdsTokenizer(), jobs, context, question, max_new_tokens=4)
    assert list(results) == [(name, 0.5) for name in sorted(sorted(KVPRESS_PRESSES), key=lambda n: n in EAGER_PRESSES)]
    for (name, ratio), result in results.items():
        _same_result(result, run_press(tiny_llama, IdsTokenizer(), name, ratio, context, question, max_new_tokens=4))
        assert result.hook_s > 0 and result.prefill_s > result.hook_s and result.tail_s > 0


def test_run_presses_scores_like_run_press(tiny_llama, token_ids):
    """Without a tail (the likelihood task) the caches are scored in batches: a batch here mixes the sdpa
    forward's presses with the eager one's (observed attention), each predicting the first token from its own
    forward's logits; NLLs equal each press alone to float rounding."""
    context, _, continuation = token_ids
    jobs = [("pyramidkv", 0.5, {}), ("expected_attention", 0.25, {}), ("observed_attention", 0.5, {}),
            ("snapkv", 0.5, {}), ("knorm", 0.5, {})]
    results = run_presses(tiny_llama, None, jobs, context, None, continuation_ids=continuation)
    assert set(results) == {job[:2] for job in jobs}
    for (name, ratio), result in results.items():
        alone = run_press(tiny_llama, None, name, ratio, context, None, continuation_ids=continuation)
        assert result.nll == pytest.approx(alone.nll, abs=1e-4), name
        assert result.reference.greedy_match == alone.reference.greedy_match
        assert result.reference.token_nll == pytest.approx(alone.reference.token_nll, abs=1e-4)
        assert result.kept_per_layer == alone.kept_per_layer and result.kv_bytes_after == alone.kv_bytes_after
        assert result.nll is not None and math.isfinite(result.nll) and result.decode_s == 0 and result.tail_s > 0


def test_run_presses_decodes_and_scores_in_batches_like_one_at_a_time(tiny_llama, token_ids):
    """Answering with a reference (the agreement task): batched ids equal the answers alone, NLLs the scores alone."""
    context, question, continuation = token_ids
    jobs = [("snapkv", 0.5, {}), ("knorm", 0.5, {}), ("tova", 0.25, {}), ("pyramidkv", 0.5, {})]
    both = run_presses(tiny_llama, IdsTokenizer(), jobs, context, question, max_new_tokens=4,
                       continuation_ids=continuation, decode_with_reference=True)
    for (name, ratio), result in both.items():
        alone = run_press(tiny_llama, IdsTokenizer(), name, ratio, context, question, max_new_tokens=4)
        scored = run_press(tiny_llama, None, name, ratio, context, question, continuation_ids=continuation)
        assert result.new_token_ids == alone.new_token_ids and result.text == alone.text
        assert result.nll == pytest.approx(scored.nll, abs=1e-4)
        assert result.kv_bytes_after == alone.kv_bytes_after and result.decode_s > 0 and result.tail_s > 0


def test_an_eager_prefill_that_cannot_fit_is_refused_before_it_starts(tiny_llama, token_ids, monkeypatch):
    """observed_attention materialises [heads, N, N] per layer: 2 x 4 x 200 x 200 x 4 bytes = 1.2 MiB here."""
    from kvcrush.errors import ResourceError

    forwards = []
    handle = tiny_llama.register_forward_pre_hook(lambda module, args: forwards.append(1))
    monkeypatch.setattr(kvpress_runner, "available_memory", lambda device: 1 << 20)  # 1 MiB left
    try:
        for run in (lambda: prefill_with_press(tiny_llama, make_press("observed_attention", 0.5), token_ids[0],
                                               eager=True),
                    lambda: prefill_with_presses(tiny_llama, [("observed_attention", 0.5, {})], token_ids[0])):
            with pytest.raises(ResourceError, match=r"\[4 heads, 200, 200\].*about 1\.2 MiB.*only 1\.0 MiB"):
                run()
        assert forwards == []
        monkeypatch.setattr(kvpress_runner, "available_memory", lambda device: 2 << 20)  # 2 MiB: it fits
        prefill_with_press(tiny_llama, make_press("observed_attention", 0.5), token_ids[0], eager=True)
        assert forwards
    finally:
        handle.remove()

