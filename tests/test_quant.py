"""Integer storage of KV rows: round-trip error bounds and the bytes the packed tensors really hold."""

from __future__ import annotations

import pytest
import torch

from kvcrush.quant import GROUP_SIZE, KVStorage, check_bits, dequantize, quantize, row_bytes


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_round_trip_error_is_within_half_a_step(bits):
    rows = torch.randn(1, 3, 50, 64, generator=torch.Generator().manual_seed(bits)) * 4
    stored = quantize(rows, bits)
    restored = dequantize(stored, torch.float32)
    assert restored.shape == rows.shape
    step = stored.scale.float().repeat_interleave(stored.group, dim=-1)  # [1, 3, 50, 64]
    zero_rounding = stored.zero.float().abs().repeat_interleave(stored.group, dim=-1) * 2**-10
    assert bool(((rows - restored).abs() <= step / 2 + zero_rounding + 1e-6).all())
    # Fewer bits, coarser steps: the error really depends on the bits.
    assert float(step.mean()) == pytest.approx(float((rows.amax(-1) - rows.amin(-1)).mean()) / (2**bits - 1),
                                               rel=0.01)


def test_every_code_and_the_group_extremes_round_trip_exactly():
    levels = torch.arange(16, dtype=torch.float32)
    rows = torch.cat([levels, levels.flip(0), levels, levels.flip(0)])[None] * 0.5 - 3.0  # 64 values, step 0.5
    restored = dequantize(quantize(rows, 4), torch.float32)
    assert torch.equal(restored, rows)


@pytest.mark.parametrize("bits, expected", [(8, 64 + 4), (4, 32 + 4), (2, 16 + 4)])
def test_packed_bytes_are_what_is_stored(bits, expected):
    rows = torch.randn(2, 3, 10, 64)
    stored = quantize(rows, bits)
    assert stored.packed.dtype == torch.uint8 and stored.packed.shape[-1] == 64 * bits // 8
    assert stored.nbytes == 2 * 3 * 10 * expected
    assert row_bytes(bits, 64, 4) == expected
    assert row_bytes(16, 64, 4) == 256 and row_bytes(16, 64, 2) == 128


def test_rows_that_do_not_fill_a_group_use_one_group_per_row():
    rows = torch.randn(1, 2, 5, 24)
    stored = quantize(rows, 4)
    assert stored.group == 24 and stored.scale.shape[-1] == 1
    assert GROUP_SIZE == 64


def test_constant_rows_do_not_divide_by_zero():
    rows = torch.full((1, 1, 3, 64), 2.5)
    assert torch.allclose(dequantize(quantize(rows, 4), torch.float32), rows)


def test_bad_bits_are_refused():
    with pytest.raises(ValueError, match="kv_bits must be one of"):
        check_bits(3)
    with pytest.raises(ValueError, match="no quantization"):
        quantize(torch.zeros(1, 64), 16)


def test_row_bits_marks_representatives_and_the_residual_window():
    storage = KVStorage(kv_bits=8, representative_bits=4, residual_rows=2)
    kept = torch.tensor([[0, 3, 5, 7, 9, 11], [1, 3, 6, 7, 9, 11]])
    bits = storage.row_bits(kept, torch.tensor([3, 7]))
    assert bits.tolist() == [[8, 4, 8, 4, 16, 16], [8, 4, 8, 4, 16, 16]]
    assert not KVStorage().quantized
    assert KVStorage().row_bits(kept, None).eq(16).all()
