"""A quantized cache layer: rows come back in order within the quantization error, bytes really drop."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from kvcrush.kvcache import cache_bytes, cache_lengths, set_layer_rows
from kvcrush.quant import KVStorage, dequantize, quantize, row_bytes
from kvcrush.quantized_cache import QuantizedKVLayer


def _rows(tokens: int, heads: int = 3, dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, heads, tokens, dim, generator=generator), torch.randn(1, heads, tokens, dim,
                                                                                generator=generator)


def _reference(rows: torch.Tensor, row_bits: torch.Tensor) -> torch.Tensor:
    """Each row quantized alone at its bits: what the layer must give back, row for row."""
    out = rows.clone()
    for head in range(rows.shape[1]):
        for index, bits in enumerate(row_bits[head].tolist()):
            if bits < 16:
                out[0, head, index] = dequantize(quantize(rows[0, head, index][None], bits), rows.dtype)[0]
    return out


def test_mixed_precision_rows_come_back_in_order():
    keys, values = _rows(12)
    row_bits = torch.full((3, 12), 8, dtype=torch.int8)
    row_bits[0, [1, 4]] = 4  # representatives sit at different slots in different heads
    row_bits[1, [2, 5]] = 4
    row_bits[2, [0, 7]] = 4
    row_bits[:, 10:] = 16
    layer = QuantizedKVLayer(KVStorage(kv_bits=8, representative_bits=4, residual_rows=2))
    layer.set_rows(keys, values, row_bits)
    assert torch.equal(layer.keys, _reference(keys, row_bits))
    assert torch.equal(layer.values, _reference(values, row_bits))
    assert torch.equal(layer.row_bits(), row_bits)
    assert layer.get_seq_length() == 12
    slots = 3 * (2 + 8) * 2  # int16 slots of both precisions, per head
    expected = 3 * (8 * 2 * row_bytes(8, 64, 4) + 2 * 2 * row_bytes(4, 64, 4) + 2 * 2 * row_bytes(16, 64, 4))
    assert layer.stored_bytes() == expected + slots


def test_heads_with_different_counts_at_one_precision_are_padded_and_read_back_exactly():
    keys, values = _rows(6)
    row_bits = torch.full((3, 6), 4, dtype=torch.int8)
    row_bits[0, 0] = 8
    row_bits[2, [1, 3]] = 8
    layer = QuantizedKVLayer(KVStorage(kv_bits=4, representative_bits=8, residual_rows=0))
    layer.set_rows(keys, values, row_bits)
    assert torch.equal(layer.keys, _reference(keys, row_bits))
    assert torch.equal(layer.row_bits(), row_bits)
    assert layer.get_seq_length() == 6
    new_keys, new_values = _rows(2, seed=3)
    layer.update(new_keys, new_values)  # appended rows take slots after the padded groups' rows
    assert layer.row_bits()[:, 6:].eq(4).all() and torch.equal(layer.row_bits()[:, :6], row_bits)
    assert torch.equal(layer.keys[..., :6, :], _reference(keys, row_bits))


def test_update_attends_over_everything_and_new_rows_leave_the_residual_window_quantized():
    keys, values = _rows(10)
    storage = KVStorage(kv_bits=4, representative_bits=4, residual_rows=3)
    layer = QuantizedKVLayer(storage)
    layer.set_rows(keys, values, storage.row_bits(torch.arange(10).expand(3, -1), None))
    before = layer.keys
    new_keys, new_values = _rows(5, seed=1)
    out_keys, out_values = layer.update(new_keys, new_values)
    # This step attends over the stored rows and the new rows as they came (full precision).
    assert torch.equal(out_keys[..., :10, :], before) and torch.equal(out_keys[..., 10:, :], new_keys)
    assert torch.equal(out_values[..., 10:, :], new_values)
    # Afterwards only the newest 3 rows stay in full precision; the others were quantized in order.
    assert layer.get_seq_length() == 15 and layer.row_bits()[0].tolist() == [4] * 12 + [16] * 3
    assert torch.equal(layer.keys[..., 12:, :], new_keys[..., 2:, :])
    assert torch.equal(layer.keys[..., 10:12, :], _reference(new_keys[..., :2, :], torch.full((3, 2), 4)))


def test_rows_appended_after_a_mixed_layer_keep_their_order():
    keys, values = _rows(8)
    storage = KVStorage(kv_bits=8, representative_bits=2, residual_rows=1)
    row_bits = torch.tensor([[8, 2, 8, 8, 2, 8, 8, 16]] * 3, dtype=torch.int8)
    layer = QuantizedKVLayer(storage)
    layer.set_rows(keys, values, row_bits)
    new_keys, new_values = _rows(3, seed=2)
    layer.update(new_keys, new_values)
    assert layer.row_bits()[0].tolist() == [8, 2, 8, 8, 2, 8, 8, 8, 8, 8, 16]
    appended = _reference(new_keys, torch.tensor([[8, 8, 16]] * 3))
    expected = torch.cat([_reference(keys, row_bits.clamp(max=8)), appended], dim=2)
    assert torch.equal(layer.keys, expected)


def test_cache_bytes_counts_the_stored_tensors_and_writing_keys_directly_is_refused():
    cache = DynamicCache()
    keys, values = _rows(40)
    cache.update(keys, values, 0)
    full = cache_bytes(cache)
    storage = KVStorage(kv_bits=4, representative_bits=4, residual_rows=8)
    set_layer_rows(cache, 0, keys, values, storage, storage.row_bits(torch.arange(40).expand(3, -1), None))
    assert isinstance(cache.layers[0], QuantizedKVLayer)
    assert cache_lengths(cache) == [40]
    assert cache_bytes(cache) == 3 * 2 * (32 * row_bytes(4, 64, 4) + 8 * row_bytes(16, 64, 4))
    assert full / cache_bytes(cache) > 3  # 32 of 40 rows at 4 bits
    with pytest.raises(TypeError, match="set_rows"):
        cache.layers[0].keys = keys
