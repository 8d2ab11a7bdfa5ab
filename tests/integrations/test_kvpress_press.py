"""KVCrush and our policies as NVIDIA kvpress presses, checked against our engine and kvpress itself.

Option mapping for `KVCrushPress(SnapKVPress(window_size=W))` = our `kvcrush` over `snapkv`
(see `kvcrush.integrations.kvpress`): the integer budget `compute_n_kept(N, ratio)`; `recent=0` and
`sink=0`, because kvpress's SnapKV keeps its window through its scores (max + 1), not as a recent
window outside the split; `pooling="avg"` (kvpress's zero-padded average); `signature_heads="kv"`,
because kvpress scorers give one score row per KV head.
"""

import pytest
import torch
from transformers import DynamicCache, pipeline

import kvcrush
from kvcrush.errors import PolicyError
from kvcrush.kvcache import cache_lengths
from tests.conftest import kvpress_or_skip

kvpress_or_skip()  # skips this module where kvpress is missing or rejects the installed transformers

from kvpress import KnormPress, SnapKVPress  # noqa: E402
from kvpress.utils import compute_n_kept  # noqa: E402

from benchmarks.kvpress_runner import press_kept_indices  # noqa: E402
from kvcrush.integrations.kvpress import KVCrushPress, PolicyPress, as_press  # noqa: E402
from kvcrush.prompts import EncodedPrompt  # noqa: E402

N_TOKENS = 300
WINDOW = 32
RATIOS = [0.25, 0.5, 0.75]


@pytest.fixture(scope="module")
def prompt_ids():
    """Distinct token ids: no two tokens share a key norm at layer 0 (see test_knorm_ties_...)."""
    return torch.randperm(8000, generator=torch.Generator().manual_seed(7))[:N_TOKENS].tolist()


@pytest.fixture(scope="module")
def prepared(tiny_lm, prompt_ids):
    return kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(prompt_ids, []))


def prefill(lm, press, ids):
    """`with press(model): model(...)`, kvpress's documented way to use a press."""
    cache = DynamicCache(config=lm.model.config)
    with torch.no_grad(), press(lm.model):
        lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache


def matched_kvcrush(n_kept, **options):
    return kvcrush.make_policy("kvcrush", budget=n_kept, base="snapkv", window=WINDOW, pooling="avg", sink=0,
                               recent=0, signature_heads="kv", **options)


def assert_same_layers(press_layers, engine_layers):
    assert len(press_layers) == len(engine_layers)
    for ours, theirs in zip(press_layers, engine_layers, strict=True):
        assert torch.equal(ours.kept, theirs.kept), f"layer {ours.layer}: kept sets differ"
        assert torch.equal(ours.signatures, theirs.signatures)
        assert torch.equal(ours.anchor, theirs.anchor)
        assert torch.equal(ours.distances, theirs.distances)
        assert torch.equal(ours.candidates, theirs.candidates)
        assert torch.equal(ours.representatives, theirs.representatives)


@pytest.mark.parametrize("ratio", RATIOS)
def test_kvcrush_press_equals_engine_kvcrush_over_snapkv(tiny_lm, prompt_ids, prepared, ratio):
    press = KVCrushPress(SnapKVPress(window_size=WINDOW), compression_ratio=ratio)
    cache = prefill(tiny_lm, press, prompt_ids)
    n_kept = compute_n_kept(N_TOKENS, ratio)
    assert cache_lengths(cache) == [n_kept] * tiny_lm.n_layers
    engine = prepared.select(matched_kvcrush(n_kept))
    assert_same_layers(press.trace, engine.layers)
    for layer in press.trace:
        assert layer.kept.shape == (tiny_lm.kv_heads, n_kept)
        assert layer.crush == kvcrush.budget.round_half_up(0.25 * n_kept) == layer.crush_used
        assert layer.signatures.shape == (N_TOKENS, tiny_lm.kv_heads)  # KV-head signatures over all N tokens
        reps = layer.representatives
        assert set(reps.tolist()) <= set(layer.candidates.tolist())
        assert all(set(reps.tolist()) <= set(head.tolist()) for head in layer.kept)  # same for every head
        window = set(range(N_TOKENS - WINDOW, N_TOKENS))  # SnapKV's window ranks first in the importance part
        assert all(window <= set(head.tolist()) for head in layer.kept)


def test_kvcrush_press_block_granularity_and_options_equal_engine(tiny_lm, prompt_ids, prepared):
    options = {"granularity": "block", "block_size": 8, "anchor": "mean", "crush_fraction": 0.5}
    press = KVCrushPress(SnapKVPress(window_size=WINDOW), compression_ratio=0.6, **options)
    prefill(tiny_lm, press, prompt_ids)
    n_kept = compute_n_kept(N_TOKENS, 0.6)
    engine = prepared.select(matched_kvcrush(n_kept, **options))
    assert_same_layers(press.trace, engine.layers)
    assert press.trace[0].granularity == "block" and press.trace[0].representatives.numel() > 0


def test_kvcrush_press_gathers_the_kept_rows(tiny_lm, prompt_ids):
    full = prefill(tiny_lm, KnormPress(compression_ratio=0.0), prompt_ids)
    press = KVCrushPress(KnormPress(), compression_ratio=0.5, anchor="random", seed=3)
    cache = prefill(tiny_lm, press, prompt_ids)
    for full_layer, layer, trace in zip(full.layers, cache.layers, press.trace, strict=True):
        for head, kept in enumerate(trace.kept):
            assert torch.equal(layer.keys[0, head], full_layer.keys[0, head, kept])
            assert torch.equal(layer.values[0, head], full_layer.values[0, head, kept])


def test_ratio_zero_leaves_the_cache_and_a_second_prefill_replaces_the_trace(tiny_lm, prompt_ids):
    press = KVCrushPress(SnapKVPress(window_size=WINDOW), compression_ratio=0.0)
    assert cache_lengths(prefill(tiny_lm, press, prompt_ids)) == [N_TOKENS] * tiny_lm.n_layers
    assert press.trace == []
    press.compression_ratio = 0.5  # what kvpress's evaluation harness does between runs
    cache = DynamicCache(config=tiny_lm.model.config)
    with torch.no_grad(), press(tiny_lm.model):
        for _ in range(2):  # two prefills inside one context: the trace is the last one's
            cache = DynamicCache(config=tiny_lm.model.config)
            tiny_lm.model(input_ids=torch.tensor([prompt_ids]), past_key_values=cache)
    assert [layer.layer for layer in press.trace] == list(range(tiny_lm.n_layers))


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        KVCrushPress(SnapKVPress(), compression_ratio=1.0)
    with pytest.raises(PolicyError):
        KVCrushPress(SnapKVPress(), compression_ratio=0.5, anchor="nope")
    with pytest.raises(TypeError):
        KVCrushPress(kvcrush.make_policy("snapkv"), compression_ratio=0.5)
    with pytest.raises(TypeError):
        as_press(KnormPress())


def test_kvcrush_press_in_kvpress_pipeline(tiny_lm):
    pipe = pipeline("kv-press-text-generation", model=tiny_lm.model, tokenizer=tiny_lm.tokenizer)
    context = "The quick brown fox jumps over the lazy dog. " * 20
    press = KVCrushPress(SnapKVPress(window_size=16), compression_ratio=0.75)
    cache = DynamicCache(config=tiny_lm.model.config)
    answer = pipe(context, question="What jumps?", press=press, cache=cache, max_new_tokens=5)["answer"]
    assert isinstance(answer, str)
    n_context = press.trace[0].n_tokens
    assert len(press.trace) == tiny_lm.n_layers and n_context > 100
    assert cache_lengths(cache) == [compute_n_kept(n_context, 0.75)] * tiny_lm.n_layers  # pipeline trims the answer


@pytest.mark.parametrize("ratio", RATIOS)
def test_as_press_knorm_keeps_what_knormpress_keeps(tiny_lm, prompt_ids, ratio):
    press = as_press(kvcrush.make_policy("knorm"), compression_ratio=ratio)
    prefill(tiny_lm, press, prompt_ids)
    expected = press_kept_indices(tiny_lm.model, "knorm", ratio, prompt_ids)
    for layer, reference in zip(press.trace, expected, strict=True):
        assert torch.equal(layer.kept, reference.cpu()), f"layer {layer.layer}"


def test_knorm_ties_are_the_only_difference_from_knormpress(tiny_lm):
    """A repeated token id has the same key norm at layer 0 (RoPE preserves norms): an exact tie.

    We break ties by lower index (spec section 2); torch.topk in kvpress leaves the order unspecified,
    so with ties at the boundary the kept sets may differ, but only among equally scored tokens.
    """
    ids = torch.randint(0, 8000, (N_TOKENS,), generator=torch.Generator().manual_seed(7)).tolist()
    for ratio in (0.25, 0.5, 0.575, 0.75):
        press = as_press(kvcrush.make_policy("knorm"), compression_ratio=ratio)
        prefill(tiny_lm, press, ids)
        expected = press_kept_indices(tiny_lm.model, "knorm", ratio, ids)
        for layer, reference in zip(press.trace, expected, strict=True):
            for head in range(tiny_lm.kv_heads):
                scores = layer.scores[head]
                ours, theirs = layer.kept[head], reference[head].cpu()
                assert torch.equal(scores[ours].sort().values, scores[theirs].sort().values)


@pytest.mark.parametrize("ratio", RATIOS)
def test_as_press_snapkv_keeps_what_snapkvpress_keeps(tiny_lm, prompt_ids, ratio):
    press = as_press(kvcrush.make_policy("snapkv", window=WINDOW, pooling="avg"), compression_ratio=ratio)
    assert isinstance(press, PolicyPress)
    prefill(tiny_lm, press, prompt_ids)
    expected = press_kept_indices(tiny_lm.model, "snapkv", ratio, prompt_ids, window_size=WINDOW)
    for layer, reference in zip(press.trace, expected, strict=True):
        assert torch.equal(layer.kept, reference.cpu()), f"layer {layer.layer}"


def test_as_press_runs_our_kvcrush_and_keeps_its_own_budget_without_a_ratio(tiny_lm, prompt_ids, prepared):
    policy = kvcrush.make_policy("kvcrush", budget=100, base="h2o", sink=4, recent=8)
    press = as_press(policy)
    cache = prefill(tiny_lm, press, prompt_ids)
    assert cache_lengths(cache) == [100] * tiny_lm.n_layers
    engine = prepared.select(policy)
    for ours, theirs in zip(press.trace, engine.layers, strict=True):
        assert torch.equal(ours.kept, theirs.kept)
        assert torch.equal(ours.representatives, theirs.representatives)


@pytest.mark.slow
def test_kvcrush_press_equals_engine_on_the_packaged_model(packaged_lm, essay_prompt):
    ids = packaged_lm.tokenizer.encode(essay_prompt, add_special_tokens=False)[:400]
    ratio = 0.5
    press = KVCrushPress(SnapKVPress(window_size=WINDOW), compression_ratio=ratio)
    prefill(packaged_lm, press, ids)
    n_kept = compute_n_kept(len(ids), ratio)
    engine = kvcrush.prepare_encoded(packaged_lm, EncodedPrompt(ids, [])).select(matched_kvcrush(n_kept))
    assert len(press.trace) == packaged_lm.n_layers
    assert_same_layers(press.trace, engine.layers)
