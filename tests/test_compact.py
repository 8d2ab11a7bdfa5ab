"""Compact trace storage: packed bits and narrow integer types."""

from __future__ import annotations

import pytest
import torch

from kvcrush.compact import index_dtype, pack_bits, small_dtype, unpack_bits


@pytest.mark.parametrize("width", [1, 3, 8, 9, 32, 40, 512])
def test_unpacking_packed_bits_gives_them_back(width):
    bits = torch.rand(17, width, generator=torch.Generator().manual_seed(width)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (17, (width + 7) // 8)
    assert torch.equal(unpack_bits(packed, width), bits)


def test_bit_zero_is_the_least_significant_bit_of_the_first_byte():
    bits = torch.zeros(1, 10, dtype=torch.bool)
    bits[0, 0] = bits[0, 9] = True
    assert pack_bits(bits).tolist() == [[1, 2]]


def test_integer_types_are_the_narrowest_that_hold_the_largest_value():
    assert index_dtype(32_768) == torch.int32 and index_dtype(2**31) == torch.int64
    assert small_dtype(127) == torch.int8 and small_dtype(128) == torch.int16 and small_dtype(40_000) == torch.int32


def test_positions_stay_usable_as_indices_and_small_values_refuse_to_be_masks():
    values = torch.arange(10.0)
    assert values[torch.tensor([3, 1], dtype=index_dtype(10))].tolist() == [3.0, 1.0]
    with pytest.raises(IndexError):
        values[torch.tensor([3, 1], dtype=small_dtype(10))]


def test_packing_matches_numpys_little_endian_packbits():
    import numpy as np

    bits = torch.rand(5, 3, 21, generator=torch.Generator().manual_seed(1)) > 0.5
    assert np.array_equal(pack_bits(bits).numpy(), np.packbits(bits.numpy(), axis=-1, bitorder="little"))
