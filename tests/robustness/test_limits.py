"""kvcrush.limits: the memory preflight and the rule for which model names the shared app accepts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import kvcrush
from kvcrush import limits
from kvcrush.errors import ModelError, PromptError
from kvcrush.sizes import format_bytes

# --- available memory and the estimate -------------------------------------------------------------------


def test_available_memory_reads_meminfo_on_linux():
    free = limits.available_memory("cpu")
    if not os.path.exists("/proc/meminfo"):
        assert free is None
        return
    assert isinstance(free, int) and free > 0
    with open("/proc/meminfo") as handle:
        total = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:"))
    assert free <= total


def test_cgroup_limit_caps_available_memory(monkeypatch):
    monkeypatch.setattr(limits, "_cgroup_headroom", lambda: 12345)
    if os.path.exists("/proc/meminfo"):
        assert limits.available_memory("cpu") == 12345


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_available_memory_on_cuda():
    free, total = torch.cuda.mem_get_info()
    assert 0 < limits.available_memory("cuda") <= total


def test_estimate_grows_with_tokens_and_counts_the_kv_cache(tiny_lm):
    policy = kvcrush.make_policy("kvcrush", budget=0.5, base="h2o")
    small = limits.estimate_run_memory(tiny_lm, 100, 8, policy)
    large = limits.estimate_run_memory(tiny_lm, 1000, 8, policy)
    assert large.total > small.total
    assert small.kv_cache >= tiny_lm.kv_bytes_per_token() * 108
    assert small.logits == large.logits == tiny_lm.config.vocab_size * (4 + 4)  # the last row only, and its copy
    assert small.scoring > 0 and small.attention == 0  # SDPA keeps no attention matrices
    assert small.total == int(small.raw * limits.SAFETY_FACTOR)
    full = limits.estimate_run_memory(tiny_lm, 100, 8, kvcrush.make_policy("full"))
    assert full.scoring == 0


def test_h2o_chunks_and_snapkv_window_enter_the_scoring_term(tiny_lm):
    n = 2000
    h2o = limits.estimate_run_memory(tiny_lm, n, 1, kvcrush.make_policy("h2o", budget=0.5, chunk_size=256)).scoring
    snap = limits.estimate_run_memory(tiny_lm, n, 1, kvcrush.make_policy("snapkv", budget=0.5, window=32)).scoring
    knorm = limits.estimate_run_memory(tiny_lm, n, 1, kvcrush.make_policy("knorm", budget=0.5)).scoring
    heads = tiny_lm.query_heads
    assert h2o >= limits.SCORE_COPIES * heads * 256 * n * 4
    assert snap >= limits.SCORE_COPIES * heads * 32 * n * 4
    assert h2o > snap > knorm


def test_preflight_passes_when_memory_is_plenty(tiny_lm):
    estimate = limits.preflight(tiny_lm, 500, 16, kvcrush.make_policy("snapkv"), available=lambda d: 1 << 40)
    assert estimate.tokens == 500


def test_preflight_skips_the_check_when_memory_is_unknown(tiny_lm):
    assert limits.preflight(tiny_lm, 500, 16, None, available=lambda d: None).tokens == 500


def test_preflight_refuses_with_the_numbers(tiny_lm):
    policy = kvcrush.make_policy("snapkv", budget=0.5)
    room = limits.estimate_run_memory(tiny_lm, 300, 16, policy).total
    with pytest.raises(PromptError) as error:
        limits.preflight(tiny_lm, 4000, 16, policy, available=lambda d: room)
    message = str(error.value)
    assert "4,000 prompt tokens + 16 new tokens need about" in message
    assert f"only {format_bytes(room)} is available on cpu" in message
    assert "Shorten the prompt to about 300 tokens or fewer" in message
    assert limits.max_tokens_that_fit(tiny_lm, 16, policy, room) == 300


def test_generate_calls_the_preflight(tiny_lm, monkeypatch):
    seen = []
    monkeypatch.setattr(limits, "available_memory", lambda device: seen.append(device) or 1 << 40)
    kvcrush.generate(tiny_lm, "hello there " * 10, "snapkv", max_new_tokens=1)
    assert len(seen) >= 2 and set(seen) == {tiny_lm.device}  # before the prefill and before the selection


def test_a_prepared_prompt_counts_only_what_a_selection_adds(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt)
    n = prepared.n_budgeted
    policy = kvcrush.make_policy("h2o", budget=0.5)
    fresh = limits.estimate_run_memory(tiny_lm, n, 8, policy, hidden_rows=n)
    before = limits.estimate_run_memory(tiny_lm, n, 8, policy, prepared=prepared)
    assert fresh.hidden == n * tiny_lm.config.hidden_size * 4 * tiny_lm.n_layers
    assert before.activations == 0 and before.kv_cache < fresh.kv_cache and before.total < fresh.total
    prepared.select(policy)
    after = limits.estimate_run_memory(tiny_lm, n, 8, policy, prepared=prepared)
    assert after.scoring < before.scoring  # the scores are cached: no query chunks any more


def test_h2o_on_a_long_prompt_counts_its_second_prefill(tiny_lm, essay_prompt):
    """Hidden states kept for the last rows only (a long prompt): H2O needs every query, so scoring it prefills
    again, and the preflight counts that prefill's KV cache and activations; a cached or a windowed scorer not."""
    from kvcrush.prepared import prepare_encoded

    encoded = kvcrush.encode_prompt(tiny_lm.tokenizer, essay_prompt)
    prepared = prepare_encoded(tiny_lm, encoded, hidden_limit=1)  # keeps only the last TAIL_ROWS rows
    n = prepared.n_budgeted
    h2o, snapkv = kvcrush.make_policy("h2o", budget=0.5), kvcrush.make_policy("snapkv", budget=0.5)
    assert prepared.needs_second_prefill(h2o) and not prepared.needs_second_prefill(snapkv)
    again = limits.estimate_run_memory(tiny_lm, n, 8, h2o, prepared=prepared)
    windowed = limits.estimate_run_memory(tiny_lm, n, 8, snapkv, prepared=prepared)
    assert again.kv_cache == windowed.kv_cache + tiny_lm.kv_bytes_per_token() * n and again.activations > 0
    assert windowed.activations == 0
    prepared.select(h2o)
    assert prepared.prefills == 2 and not prepared.needs_second_prefill(h2o)
    assert limits.estimate_run_memory(tiny_lm, n, 8, h2o, prepared=prepared).activations == 0


def test_a_model_on_one_device_needs_the_whole_estimate_there(tiny_lm):
    estimate = limits.estimate_run_memory(tiny_lm, 500, 8, kvcrush.make_policy("snapkv"))
    assert limits.device_needs(tiny_lm, estimate) == {tiny_lm.device: estimate.total}


def test_weights_estimate_is_close_to_the_real_parameter_count(tiny_lm):
    real = sum(p.numel() for p in tiny_lm.model.parameters()) * 4
    assert abs(limits.weights_bytes(tiny_lm.config) - real) / real < 0.05


# --- which models the shared web app may load -------------------------------------------------------------


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    allowed = tmp_path / "models"
    (allowed / "good").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.setenv(limits.MODEL_DIRS_ENV, str(allowed))
    monkeypatch.delenv(limits.ALLOW_HUB_ENV, raising=False)
    return allowed, outside


def test_default_allowed_dir_is_the_kvcrush_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(limits.MODEL_DIRS_ENV, raising=False)
    monkeypatch.setenv("KVCRUSH_CACHE", str(tmp_path / "cache"))
    assert limits.allowed_model_dirs() == [Path(os.path.realpath(tmp_path / "cache"))]


def test_several_allowed_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv(limits.MODEL_DIRS_ENV, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert [d.name for d in limits.allowed_model_dirs()] == ["a", "b"]


def test_allowed_model_path(model_dirs):
    allowed, outside = model_dirs
    assert limits.allowed_model_path(str(allowed / "good"))
    assert limits.allowed_model_path(str(allowed))
    assert not limits.allowed_model_path(str(outside))
    assert not limits.allowed_model_path(str(allowed / ".." / "elsewhere"))  # `..` is collapsed first
    assert not limits.allowed_model_path(str(allowed) + "-sibling")  # a prefix is not a parent
    assert not limits.allowed_model_path("/etc")
    assert not limits.allowed_model_path("")
    assert not limits.allowed_model_path("bad\x00name")


def test_symlink_out_of_the_allowed_dir_is_refused(model_dirs):
    allowed, outside = model_dirs
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    assert not limits.allowed_model_path(str(allowed / "escape"))


@pytest.mark.parametrize("name", [None, "", "packaged", "default", "SmolLM2-135M-Instruct", " smollm2 "])
def test_app_accepts_the_packaged_model(model_dirs, name):
    limits.check_app_model_name(name)


def test_app_accepts_small_random_shapes_and_refuses_ones_that_do_not_fit(model_dirs, monkeypatch):
    assert limits.check_app_model_name("random:tiny") == "random:tiny"
    with pytest.raises(ModelError, match="Unknown random shape 'huge'"):
        limits.check_app_model_name("random:huge")
    monkeypatch.setattr(limits, "available_memory", lambda device: 1 << 30)
    with pytest.raises(ModelError, match=r"random:llama-3-8b needs about .* of weights but only 1.00 GiB"):
        limits.check_app_model_name("random:llama-3-8b")


def test_app_accepts_folders_under_the_allowed_dirs_only(model_dirs):
    allowed, outside = model_dirs
    assert limits.check_app_model_name(str(allowed / "good")) == str(allowed / "good")
    for name in (str(outside), "/etc", "~", "../../..", str(allowed / ".." / "elsewhere")):
        with pytest.raises(ModelError, match="This app only loads model folders under"):
            limits.check_app_model_name(name)


def test_app_refuses_hub_ids_unless_allowed(model_dirs, monkeypatch):
    with pytest.raises(ModelError, match="does not download models from the Hugging Face Hub"):
        limits.check_app_model_name("meta-llama/Llama-3-8B")
    monkeypatch.setenv(limits.ALLOW_HUB_ENV, "1")
    assert limits.check_app_model_name("meta-llama/Llama-3-8B") == "meta-llama/Llama-3-8B"


@pytest.mark.parametrize("name", ["a/b/c", "x" * 600, "name\nwith newline", "org/..", "org/na me"])
def test_app_refuses_malformed_names(model_dirs, monkeypatch, name):
    monkeypatch.setenv(limits.ALLOW_HUB_ENV, "1")
    with pytest.raises(ModelError):
        limits.check_app_model_name(name)


def test_app_refuses_non_text_names(model_dirs):
    with pytest.raises(ModelError, match="Model name must be text"):
        limits.check_app_model_name(42)  # type: ignore[arg-type]
