"""The memory projection agrees with the bytes the engine really stores, at every precision."""

from __future__ import annotations

import pytest

import kvcrush
from kvcrush.memory import KVShape, project
from kvcrush.quant import KV_BITS


def test_projection_at_16_bits_is_the_token_share():
    shape = KVShape(32, 8, 128, "bfloat16")
    projection = project(shape, 32_768, 0.25)
    assert projection.full_bytes == 4 * 2**30 and projection.ratio == pytest.approx(4.0)


@pytest.mark.parametrize("bits", KV_BITS)
def test_projection_matches_the_stored_cache(tiny_lm, essay_prompt, bits):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt[:800])
    result = prepared.generate(kvcrush.make_policy("full", kv_bits=bits), 0, reference_ids=[1])
    shape = KVShape(tiny_lm.n_layers, tiny_lm.kv_heads, tiny_lm.head_dim, "float32")
    projection = project(shape, prepared.n_budgeted, 1.0, kv_bits=bits)
    assert projection.full_bytes == result.kv_bytes_before
    assert projection.compressed_bytes == result.kv_bytes_after
    assert (projection.compressed_bytes < projection.full_bytes) == (bits < 16)
