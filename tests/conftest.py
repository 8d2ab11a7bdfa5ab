"""Shared fixtures: a tiny random Llama for fast tests, the packaged SmolLM2 for end-to-end ones."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from transformers import DynamicCache

import kvcrush
from kvcrush.attention import LayerInputs
from kvcrush.compat import cache_kwargs, hook_cache
from kvcrush.integrations import kvpress_problem


def kvpress_or_skip(module: str = "kvpress"):
    """`module` (kvpress, or one of ours that imports it) imported; or the test (or module) skipped, saying why, when
    kvpress is not installed or does not accept the installed transformers (the newest-transformers environment).

    With `KVCRUSH_REQUIRE_KVPRESS=1` (scripts/test.sh's main run) it fails instead, so a missing kvpress cannot turn the
    main suite's parity tests into skips. Any other import error is raised as it is.
    """
    problem = kvpress_problem()
    if problem is not None:
        if os.environ.get("KVCRUSH_REQUIRE_KVPRESS") == "1":
            pytest.fail(f"KVCRUSH_REQUIRE_KVPRESS=1 but kvpress cannot be used: {problem}", pytrace=False)
        pytest.skip(problem, allow_module_level=True)
    return importlib.import_module(module)


@pytest.fixture(scope="session")
def tiny_lm() -> kvcrush.LoadedModel:
    """2 layers, 4 query heads, 2 KV heads, random weights, the packaged tokenizer."""
    return kvcrush.load_model("random:tiny", device="cpu")


@pytest.fixture(scope="session")
def packaged_lm() -> kvcrush.LoadedModel:
    """The real SmolLM2-135M-Instruct, converted once from the shipped GGUF."""
    return kvcrush.load_model(device="cpu")


@pytest.fixture(scope="session")
def essay_prompt() -> str:
    """About 600 tokens of real essay text."""
    from kvcrush.data import essay_text

    return essay_text()[:2600]


class _Config:
    def __init__(self, query_heads: int) -> None:
        self.num_attention_heads = query_heads


class _ScoreOnlyModule(torch.nn.Module):
    """Stands in for an attention module when a test feeds scores directly (no attention is computed)."""

    def __init__(self, query_heads: int) -> None:
        super().__init__()
        self.config = _Config(query_heads)


def synthetic_layer(n_tokens: int, kv_heads: int = 2, query_heads: int = 4, n_total: int | None = None,
                    layer_idx: int = 0, n_layers: int = 1, query_aware: bool = False) -> LayerInputs:
    """A `LayerInputs` with random keys, for policies whose scores a test overrides."""
    total = n_total or n_tokens
    generator = torch.Generator().manual_seed(1234)
    keys = torch.randn(1, kv_heads, total, 8, generator=generator)
    return LayerInputs(
        module=_ScoreOnlyModule(query_heads), layer_idx=layer_idx, n_layers=n_layers,
        hidden_states=torch.zeros(1, total, 16), keys=keys, values=keys.clone(),
        cos=torch.ones(1, total, 8), sin=torch.zeros(1, total, 8), n_context=n_tokens, window_start=n_tokens,
        query_aware=query_aware,
    )


def capture_layer_inputs(lm, input_ids: torch.Tensor) -> tuple[list[LayerInputs], tuple]:
    """Run one eager forward with attention outputs and capture what each attention layer saw."""
    captured: list[LayerInputs] = []

    def hook(module, args, kwargs, output):
        layer_cache = hook_cache(kwargs).layers[module.layer_idx]
        cos, sin = kwargs["position_embeddings"]
        n = input_ids.shape[1]
        captured.append(LayerInputs(module, module.layer_idx, lm.n_layers, kwargs["hidden_states"],
                                    layer_cache.keys, layer_cache.values, cos, sin, n, n, False))

    model = lm.model
    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.model.layers]
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = model(input_ids=input_ids, **cache_kwargs(model, DynamicCache(config=model.config)),
                           output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
        for handle in handles:
            handle.remove()
    return captured, output.attentions
