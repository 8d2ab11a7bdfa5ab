"""Real model shapes with random weights: timing and memory do not depend on the weights.

`load_model("random:llama-3-8b")` builds a model of that shape from its config, so GPU runs can
measure prefill, selection overhead, KV bytes and decode time at full scale without the weights,
and tests can use `random:tiny`. Shapes follow the published configs of each model.
"""

from __future__ import annotations

from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=49152,
                 max_position_embeddings=8192, rope_theta=10000.0, tie_word_embeddings=True),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                       max_position_embeddings=32768, rope_theta=500000.0, tie_word_embeddings=False),
    "llama-3-70b": dict(model_type="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, intermediate_size=28672, vocab_size=128256,
                        max_position_embeddings=32768, rope_theta=500000.0, tie_word_embeddings=False),
    "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                     max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=32768,
                       max_position_embeddings=32768, rope_theta=1000000.0, sliding_window=None,
                       tie_word_embeddings=False),
}

# Tiny random models of every supported family (`kvcrush.models.loading.FAMILIES`), for tests and `--tiny` runs:
# 2 layers, 4 query heads, 2 KV heads, head_dim 16, the packaged tokenizer's vocabulary, and each family's own
# traits: sliding windows of 32 tokens ("-sw", Gemma's local layers), Gemma's query_pre_attn_scalar and
# Gemma-2's soft-capping, Phi-3's fused projection with partial rotary, mixtures of experts.
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama"),
    "tiny-qwen2": dict(model_type="qwen2"),
    "tiny-qwen2-sw": dict(model_type="qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=1),
    "tiny-qwen3": dict(model_type="qwen3"),
    "tiny-mistral": dict(model_type="mistral", sliding_window=None),
    "tiny-mistral-sw": dict(model_type="mistral", sliding_window=32),
    "tiny-mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "tiny-qwen3-moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    "tiny-phi3": dict(model_type="phi3", partial_rotary_factor=0.5, pad_token_id=0),
    "tiny-gemma2": dict(model_type="gemma2", sliding_window=32, query_pre_attn_scalar=24,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "tiny-gemma3": dict(model_type="gemma3_text", sliding_window=32, query_pre_attn_scalar=24,
                        layer_types=["sliding_attention", "full_attention"]),
}
SHAPES.update({name: {**_TINY, **traits} for name, traits in TINY_FAMILIES.items()})

# How people write these names (the memory projection lists them), and the dtype each usually runs in.
LABELS: dict[str, str] = {"smollm2-135m": "SmolLM2-135M", "llama-3-8b": "Llama-3-8B", "llama-3-70b": "Llama-3-70B",
                          "qwen2-7b": "Qwen2-7B", "mistral-7b": "Mistral-7B"}

# Llama-3.1-8B, the GPU acceptance check's shape (benchmarks/gpu_check.py): Llama-3-8B's layers with a 128k context
# through llama3 RoPE scaling. RoPE is given as `rope_parameters` with rope_theta inside, the form transformers 5.x
# keeps (5.2 and 5.17 both accept it; a `rope_scaling` dict would be rewritten into it in place).
SHAPES["llama-3.1-8b"] = dict(
    model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=False,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192))
LABELS["llama-3.1-8b"] = "Llama-3.1-8B"


def head_dim(name: str) -> int:
    settings = SHAPES[name]
    return int(settings.get("head_dim") or settings["hidden_size"] // settings["num_attention_heads"])


def shape_config(name: str, **overrides: Any):
    """A transformers config for a named shape; `overrides` (e.g. num_hidden_layers=4) shrink it."""
    from transformers import AutoConfig

    from kvcrush.errors import ModelError

    if name not in SHAPES:
        raise ModelError(f"Unknown random shape {name!r}; choose one of {', '.join(SHAPES)}.")
    settings = {**SHAPES[name], **overrides}
    pattern = settings.get("layer_types")
    if pattern is not None and len(pattern) != settings["num_hidden_layers"]:  # a depth override repeats the pattern
        settings["layer_types"] = [pattern[i % len(pattern)] for i in range(settings["num_hidden_layers"])]
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    config.bos_token_id, config.eos_token_id = 1, 2
    return config
