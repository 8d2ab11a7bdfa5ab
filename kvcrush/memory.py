"""KV-cache memory arithmetic: what a budget saves for a given model shape and context length."""

from __future__ import annotations

from dataclasses import dataclass

from kvcrush.models.shapes import LABELS, SHAPES, head_dim
from kvcrush.quant import RESIDUAL_ROWS, row_bytes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class KVShape:
    """The shape that sets KV-cache size: `2 * layers * kv_heads * head_dim * bytes` per token."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "bfloat16"

    def bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    def stored_bytes_per_token(self, kv_bits: int = 16) -> float:
        """Bytes per token stored at `kv_bits` (`kvcrush.quant`: codes plus float16 scale and zero per group)."""
        return 2 * self.layers * self.kv_heads * row_bytes(kv_bits, self.head_dim, DTYPE_BYTES[self.dtype])


@dataclass(frozen=True)
class MemoryProjection:
    tokens: int
    kept_tokens: int
    full_bytes: float
    compressed_bytes: float

    @property
    def saved_bytes(self) -> float:
        return self.full_bytes - self.compressed_bytes

    @property
    def ratio(self) -> float:
        return self.full_bytes / self.compressed_bytes if self.compressed_bytes else float("inf")


def project(shape: KVShape, tokens: int, budget_fraction: float, batch: int = 1, kv_bits: int = 16) -> MemoryProjection:
    """KV bytes of a full versus a compressed cache at `tokens` context, for `batch` sequences.

    With `kv_bits` below 16 the kept tokens are stored quantized as this engine stores them: codes plus
    scales, and the newest `RESIDUAL_ROWS` tokens of each layer in `shape.dtype` (`kvcrush.quant`).
    """
    if tokens < 1 or not 0 < budget_fraction <= 1 or batch < 1:
        raise ValueError("tokens and batch must be >= 1 and the budget fraction in (0, 1].")
    kept = max(1, round(tokens * budget_fraction))
    per_token = shape.bytes_per_token() * batch
    compressed = per_token * kept
    if kv_bits < 16:
        residual = min(RESIDUAL_ROWS, kept)
        compressed = per_token * residual + shape.stored_bytes_per_token(kv_bits) * batch * (kept - residual)
    return MemoryProjection(tokens, kept, per_token * tokens, compressed)


def _preset(name: str) -> KVShape:
    settings = SHAPES[name]
    dtype = "float32" if name == "smollm2-135m" else "bfloat16"  # as this project runs it / as served
    return KVShape(settings["num_hidden_layers"], settings["num_key_value_heads"], head_dim(name), dtype)


# The model shapes of `kvcrush.models.shapes` (one description of each model), by their usual names.
PRESET_SHAPES: dict[str, KVShape] = {label: _preset(name) for name, label in LABELS.items()}
