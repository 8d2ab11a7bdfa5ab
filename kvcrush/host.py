"""Moving many small tensors to the host at once: one copy (and so one wait for the GPU) per device.

Per-layer code keeps its results on the layer's device; whatever must reach the host (traces for the UI,
counts that size Python loops) is gathered here after every layer has queued its work, so a selection
waits for the accelerator a fixed number of times however many layers the model has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_ALIGN = 8  # bytes: every packed tensor starts at a multiple of the widest element size, so views stay typed


def to_host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The CPU copies of `tensors` (any shapes and dtypes), in order, made with one copy per device.

    Each device's tensors are flattened to bytes, concatenated (aligned to 8 bytes) and moved with one
    `.to("cpu")`; the copies are typed views of that one host buffer. Tensors already on the CPU are
    packed the same way (cheap, and the code path is the one a GPU run takes).
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(i)
    for indices in by_device.values():
        group = [tensors[i] for i in indices]
        buffer, offsets = _packed(group)
        for i, copy in zip(indices, _unpacked(buffer.to("cpu"), group, offsets), strict=True):
            out[i] = copy
    return out  # type: ignore[return-value]


def _packed(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """`tensors` (at least one, all on one device) as one aligned uint8 buffer there, and where each one starts."""
    padding = tensors[0].new_zeros(_ALIGN, dtype=torch.uint8)
    parts: list[torch.Tensor] = []
    offsets: list[int] = []
    offset = 0
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)  # reshape copies only what is not contiguous
        if flat.numel() and flat.stride(0) != 1:  # one element can keep any stride
            flat = flat.clone(memory_format=torch.contiguous_format)
        raw = flat.view(torch.uint8)
        parts.append(raw)
        offsets.append(offset)
        offset += raw.numel()
        if raw.numel() % _ALIGN:
            parts.append(padding[: _ALIGN - raw.numel() % _ALIGN])
            offset += _ALIGN - raw.numel() % _ALIGN
    return torch.cat(parts), offsets


def _unpacked(buffer: torch.Tensor, like: Sequence[torch.Tensor], offsets: list[int]) -> list[torch.Tensor]:
    """Typed views of `buffer`, one per tensor of `like` (shapes and dtypes), from `offsets`."""
    return [buffer[start : start + t.numel() * t.element_size()].view(t.dtype).reshape(t.shape)
            for t, start in zip(like, offsets, strict=True)]


def to_device(tensors: Sequence[torch.Tensor], devices: Sequence[torch.device]) -> list[torch.Tensor]:
    """Copies of `tensors` (host tensors, e.g. seeds drawn on the CPU) on `devices[i]`, one copy per device.

    A blocking copy to a GPU waits for its queue, so a selection sends what every layer needs at once.
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, device in enumerate(devices):
        by_device.setdefault(torch.device(device), []).append(i)
    for device, indices in by_device.items():
        group = [tensors[i].to("cpu") for i in indices]
        buffer, offsets = _packed(group)
        for i, copy in zip(indices, _unpacked(buffer.to(device), group, offsets), strict=True):
            out[i] = copy
    return out  # type: ignore[return-value]


def host_ints(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """The values of integer (or bool) tensors as Python ints, flattened per tensor, read with one copy per device."""
    moved = to_host([t.reshape(-1).long() for t in tensors])
    return [t.tolist() for t in moved]


__all__ = ["to_host", "to_device", "host_ints"]
