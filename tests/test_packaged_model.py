"""End to end on the real packaged SmolLM2-135M-Instruct (CPU, fp32): needle, real eviction, bytes."""

import json
import math
import subprocess
import sys

import pytest

import kvcrush
from kvcrush.data import needle_example
from kvcrush.kvcache import cache_lengths, compressed_copy
from kvcrush.prompts import encode_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def needle(packaged_lm):
    return needle_example(packaged_lm.tokenizer, 1500, 0.5, seed=0)


def test_packaged_model_shape(packaged_lm):
    assert (packaged_lm.n_layers, packaged_lm.query_heads, packaged_lm.kv_heads, packaged_lm.head_dim) == (30, 9, 3, 64)
    assert packaged_lm.dtype.is_floating_point and str(packaged_lm.device) == "cpu"


def test_full_cache_retrieves_the_needle(packaged_lm, needle):
    result = kvcrush.generate(packaged_lm, needle.context, "full", max_new_tokens=40, question=needle.question)
    assert needle.answers[0] in result.text


def test_kvcrush_half_budget_really_halves_the_cache(packaged_lm, needle):
    encoded = encode_prompt(packaged_lm.tokenizer, needle.context, needle.question)
    policy = kvcrush.make_policy("kvcrush", budget=0.5, base="snapkv")
    prepared = kvcrush.prepare_encoded(packaged_lm, encoded, query_aware=True)
    trace = prepared.select(policy)
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], packaged_lm.model.config)
    n_tokens = encoded.n_context + len(encoded.question_ids)  # query-aware: the question is under the budget
    t = math.ceil(0.5 * n_tokens)
    assert cache_lengths(cache) == [t] * 30
    for layer, cached in zip(trace.layers, cache.layers, strict=True):
        assert cached.keys.shape == (1, 3, t, 64) and cached.values.shape == (1, 3, t, 64)
        assert layer.kept.shape == (3, t)
        assert layer.representatives.numel() == layer.crush_used > 0
    result = prepared.generate(policy, max_new_tokens=1)
    assert abs(result.kv_bytes_after - result.kv_bytes_before / 2) <= 0.02 * result.kv_bytes_before / 2
    assert result.kv_bytes_before == n_tokens * packaged_lm.kv_bytes_per_token()


def test_cli_runs_a_needle_prompt_at_quarter_budget(tmp_path, packaged_lm, needle):
    prompt_file = tmp_path / "needle.txt"
    prompt_file.write_text(needle.context, encoding="utf-8")
    command = [sys.executable, "-m", "kvcrush", "generate", "--policy", "kvcrush", "--base", "snapkv",
               "--budget", "0.25", "--prompt-file", str(prompt_file), "--question", needle.question,
               "--max-new-tokens", "40"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "KV bytes after" in completed.stdout and "(25." in completed.stdout
    assert "magic number" in completed.stdout.lower()

    completed = subprocess.run(command + ["--json", "--max-new-tokens", "4"], capture_output=True, text=True,
                               timeout=300)
    data = json.loads(completed.stdout)
    assert data["kv_bytes_after"] < data["kv_bytes_before"] * 0.26
    assert len(data["trace"]["layers"]) == 30


def test_quantized_cache_at_a_quarter_budget(packaged_lm):
    """Issue 13's numbers on the real model: 25% at 4 bits stores >= 24x fewer bytes than the fp32 full cache
    (scales and residual window included), and 8 bits changes the continuation NLL by under 0.01."""
    from kvcrush.data import continuation_example
    from kvcrush.prompts import EncodedPrompt

    context, continuation = continuation_example(packaged_lm.tokenizer, 2048, 64, offset=3000)
    prepared = kvcrush.prepare_encoded(packaged_lm, EncodedPrompt(context, [], []))
    results = {bits: prepared.generate(kvcrush.make_policy("snapkv", budget=0.25, kv_bits=bits), 0,
                                       reference_ids=continuation) for bits in (16, 8, 4)}
    full_bytes = results[16].kv_bytes_before
    assert full_bytes == 2048 * packaged_lm.kv_bytes_per_token()  # fp32, every prompt token
    assert full_bytes / results[16].kv_bytes_after == pytest.approx(4.0)
    assert full_bytes / results[4].kv_bytes_after >= 24
    assert abs(results[8].reference_nll - results[16].reference_nll) < 0.01
    assert abs(results[4].reference_nll - results[16].reference_nll) < 0.1
