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

# How people write these names (the memory projection lists them), and the dtype each usually runs in.
LABELS: dict[str, str] = {"smollm2-135m": "SmolLM2-135M", "llama-3-8b": "Llama-3-8B", "llama-3-70b": "Llama-3-70B",
                          "qwen2-7b": "Qwen2-7B", "mistral-7b": "Mistral-7B"}


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
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    config.bos_token_id, config.eos_token_id = 1, 2
    return config
