"""Moving many tensors between host and device in one copy per device."""

from __future__ import annotations

import torch

from kvcrush.host import host_ints, to_device, to_host
from kvcrush.syncs import HostSyncCounter


def _mixed() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, generator=generator), torch.arange(7), torch.rand(4, generator=generator) > 0.5,
            torch.randint(0, 9, (2, 3), generator=generator, dtype=torch.int8), torch.zeros(0, 4),
            torch.tensor(2.5, dtype=torch.float16), torch.arange(12).reshape(3, 4).T,  # not contiguous
            torch.randn(2, 2, generator=generator)[:1, :1]]  # one element with odd strides


def test_to_host_returns_equal_tensors_with_one_copy():
    tensors = _mixed()
    with HostSyncCounter() as syncs:
        moved = to_host(tensors)
    assert syncs.count == 1
    for original, copy in zip(tensors, moved, strict=True):
        assert copy.device.type == "cpu" and copy.dtype == original.dtype and copy.shape == original.shape
        assert torch.equal(copy, original)


def test_to_device_returns_equal_tensors_with_one_copy_per_device():
    with HostSyncCounter() as syncs:
        tensors = _mixed()  # made inside the block without a device: host tensors
        moved = to_device(tensors, [torch.device("cpu")] * len(tensors))
    assert syncs.count == 1
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(tensors, moved, strict=True))


def test_host_ints_reads_every_tensor_at_once():
    tensors = [torch.tensor(3), torch.tensor([1, 2]), torch.tensor([True, False])]
    with HostSyncCounter() as syncs:
        values = host_ints(tensors)
    assert values == [[3], [1, 2], [1, 0]] and syncs.count == 1
