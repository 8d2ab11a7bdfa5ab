"""Count, on any device, the torch calls that would make the host wait for a GPU.

On CUDA a kernel launch returns at once; the host only waits when it needs a value back (`item`,
`tolist`, a copy to the CPU, a Python `bool`/`int`/`float` of a tensor, a shape that depends on the data:
`nonzero`, boolean-mask indexing, `unique`, `bincount`, ...) or copies host memory to the device without
`non_blocking=True` (`torch.tensor(data, device=...)`, `host_tensor.to(device)`): PyTorch then waits for the
stream. Each such call drains the GPU's queue, so per-layer code should make none.

`HostSyncCounter` is a `torch.overrides.TorchFunctionMode`: inside its `with` block it sees every torch
function and `Tensor` method called from Python, so a CPU-only test can count what a GPU run would do
(`torch.cuda.set_sync_debug_mode` needs a GPU). On a CPU every tensor is a host tensor, so the counter tells
the two kinds apart by where a tensor came from:

- host tensors: made inside the block by a factory without a `device=` (`torch.arange(n)`,
  `torch.tensor(list)`), moved with `.cpu()` / `.to("cpu")`, or computed from host tensors only;
- device tensors: everything else (the model's weights and cache, scores made before the block, what a
  factory makes with `device=...`, anything computed from a device tensor).

Counted: a value read (`item`, `tolist`, `numpy`, `bool`/`int`/`float`/`index`/`format` of a tensor, `x in t`,
`torch.equal`), a data-dependent shape (`nonzero`, `argwhere`, one-argument `where`, `masked_select`,
`unique`, `bincount`, `repeat_interleave` with tensor repeats and no `output_size`, indexing with a bool
mask, slicing or sizing with a 0-d tensor) or `.cpu()` / `.to("cpu")` of a device tensor; and a blocking
copy to the device: `torch.tensor(data, device=...)`, or `.to(device)` / `.copy_` of a host tensor.
Operations on host tensors alone never count.

Limits: calls made inside C++ are not seen (one counted call may sync more than once on a GPU); a device
named by a `torch.device` object (`.to(t.device)`) is taken for the accelerator, so a move to the CPU must
be written `.cpu()` or `.to("cpu")` to be seen; `torch.cuda.synchronize` (explicit waits for timing) is not
counted.

    with HostSyncCounter() as syncs:
        prepared.select(policy)
    syncs.count, syncs.by_call, syncs.by_site
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor
_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = __file__
_HOST = "_kvcrush_host_tensor"  # attribute set on host tensors made inside a counting block


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def _is_host(tensor: Tensor) -> bool:
    return getattr(tensor, _HOST, False)


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor in an argument or a result (nested tuples, lists, dicts, slices)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for part in value:
            yield from _tensors(part)
    elif isinstance(value, dict):
        for part in value.values():
            yield from _tensors(part)
    elif isinstance(value, slice):
        yield from _tensors((value.start, value.stop, value.step))


def _on_device(*values: Any) -> bool:
    """Whether any tensor among `values` lives on the (would-be) accelerator."""
    return any(not _is_host(t) for value in values for t in _tensors(value))


def _device_named(device: Any) -> str | None:
    """'cpu' for a device written as the string "cpu", 'device' for any other device, None for no device."""
    if device is None:
        return None
    if isinstance(device, str):
        return "cpu" if device.split(":")[0] == "cpu" else "device"
    if isinstance(device, torch.device):
        return "device"  # `t.device` objects: on a GPU run these name the accelerator
    if isinstance(device, Tensor):
        return "cpu" if _is_host(device) else "device"
    return None


def _is_mask(index: Any) -> bool:
    return any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(index) if t.dim() > 0)


def _has_tensor_slice(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, slice) and _on_device(part) for part in parts)


def _value_read(name: str) -> Callable[[tuple, dict], str | None]:
    return lambda args, kwargs: name if _on_device(args, kwargs) else None


def _getitem(args: tuple, kwargs: dict) -> str | None:
    index = args[1] if len(args) > 1 else None
    if _is_mask(index) and _on_device(args):
        return "Tensor.__getitem__[bool mask]"
    if _has_tensor_slice(index):
        return "Tensor.__getitem__[tensor slice]"
    return None


def _setitem(args: tuple, kwargs: dict) -> str | None:
    index = args[1] if len(args) > 1 else None
    value = args[2] if len(args) > 2 else None
    # A Python number under a bool mask becomes `masked_fill_` (no sync); a tensor value goes through `nonzero`.
    if _is_mask(index) and _is_tensor(value) and _on_device(args):
        return "Tensor.__setitem__[bool mask]"
    if _has_tensor_slice(index):
        return "Tensor.__setitem__[tensor slice]"
    return None


def _to(args: tuple, kwargs: dict) -> str | None:
    source = args[0]
    targets = [_device_named(t) for t in (*args[1:], kwargs.get("device"), kwargs.get("other"))]
    if "cpu" in targets and not _is_host(source):
        return "Tensor.to('cpu')"
    if "device" in targets and _is_host(source) and not kwargs.get("non_blocking", False):
        return "Tensor.to(device) of a host tensor"
    return None


def _cpu(args: tuple, kwargs: dict) -> str | None:
    return None if _is_host(args[0]) else "Tensor.cpu"


def _copy(args: tuple, kwargs: dict) -> str | None:
    target, source = args[0], args[1]
    if _is_host(target) != _is_host(source) and not kwargs.get("non_blocking", len(args) > 2 and args[2]):
        return "Tensor.copy_ across devices"
    return None


def _where(args: tuple, kwargs: dict) -> str | None:
    return "torch.where(condition)" if len(args) + len(kwargs) == 1 and _on_device(args) else None


def _repeat_interleave(args: tuple, kwargs: dict) -> str | None:
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    if _is_tensor(repeats) and repeats.numel() > 1 and kwargs.get("output_size") is None and _on_device(repeats):
        return "torch.repeat_interleave(tensor repeats)"
    return None


def _tensor_from_data(args: tuple, kwargs: dict) -> str | None:
    """`torch.tensor(data, device=...)`: host data copied to the device, blocking."""
    data = args[0] if args else kwargs.get("data")
    if isinstance(data, (list, tuple)) and not data:  # nothing to copy: PyTorch's copy returns before any transfer
        return None
    if _device_named(kwargs.get("device")) == "device" and not _is_tensor(data):
        return "torch.tensor(data, device=...)"
    return None


def _sized_by_tensor(name: str) -> Callable[[tuple, dict], str | None]:
    """A function whose sizes or counts come from a 0-d device tensor (read on the host)."""
    method = name.startswith("Tensor.")

    def check(args: tuple, kwargs: dict) -> str | None:
        sizes = (args[1:] if method else args, kwargs)
        return f"{name}(tensor size)" if any(t.dim() == 0 and not _is_host(t) for t in _tensors(sizes)) else None

    return check


_CLASSIFIERS: dict[Any, Callable[[tuple, dict], str | None]] = {
    Tensor.item: _value_read("Tensor.item"),
    Tensor.tolist: _value_read("Tensor.tolist"),
    Tensor.numpy: _value_read("Tensor.numpy"),
    Tensor.__bool__: _value_read("bool(tensor)"),
    Tensor.__int__: _value_read("int(tensor)"),
    Tensor.__float__: _value_read("float(tensor)"),
    Tensor.__index__: _value_read("Tensor.__index__"),
    Tensor.__format__: _value_read("format(tensor)"),
    Tensor.__repr__: _value_read("repr(tensor)"),
    Tensor.__contains__: _value_read("x in tensor"),
    Tensor.cpu: _cpu,
    Tensor.to: _to,
    Tensor.copy_: _copy,
    Tensor.__getitem__: _getitem,
    Tensor.__setitem__: _setitem,
    torch.where: _where,
    torch.repeat_interleave: _repeat_interleave,
    Tensor.repeat_interleave: _repeat_interleave,
    torch.tensor: _tensor_from_data,
    torch.as_tensor: _tensor_from_data,
}
for _function, _name in ((torch.nonzero, "torch.nonzero"), (Tensor.nonzero, "torch.nonzero"),
                         (torch.argwhere, "torch.argwhere"), (Tensor.argwhere, "torch.argwhere"),
                         (torch.masked_select, "torch.masked_select"), (Tensor.masked_select, "torch.masked_select"),
                         (torch.unique, "torch.unique"), (Tensor.unique, "torch.unique"),
                         (torch.unique_consecutive, "torch.unique_consecutive"),
                         (Tensor.unique_consecutive, "torch.unique_consecutive"),
                         (torch.bincount, "torch.bincount"),  # CUDA reads the maximum to size its output
                         (Tensor.bincount, "torch.bincount"), (torch.equal, "torch.equal"),
                         (Tensor.equal, "torch.equal"), (torch.allclose, "torch.allclose"),
                         (Tensor.allclose, "torch.allclose")):
    _CLASSIFIERS[_function] = _value_read(_name)
for _name in ("arange", "zeros", "ones", "full", "empty", "randperm", "randint", "split"):
    _CLASSIFIERS[getattr(torch, _name)] = _sized_by_tensor(f"torch.{_name}")
for _name in ("narrow", "topk", "kthvalue", "split", "expand", "reshape", "view", "repeat", "new_zeros",
              "new_ones", "new_full", "new_empty"):
    _CLASSIFIERS[getattr(Tensor, _name)] = _sized_by_tensor(f"Tensor.{_name}")


def _makes_host_tensors(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether `func`'s results live on the host: every tensor input does, and no accelerator is named."""
    if func is Tensor.to or func is Tensor.cpu:
        targets = [_device_named(t) for t in (*args[1:], kwargs.get("device"), kwargs.get("other"))]
        return func is Tensor.cpu or "cpu" in targets or ("device" not in targets and _is_host(args[0]))
    if _device_named(kwargs.get("device")) == "device":
        return False
    return not _on_device(args, kwargs)


def _caller() -> str:
    """`file:line` of the innermost frame outside torch and this module (where the sync is written)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH_DIR) and name != _THIS_FILE:
            return f"{os.path.relpath(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class HostSyncCounter(TorchFunctionMode):
    """Counts calls that would force a host sync on a GPU (see the module docstring) inside a `with` block.

    count: how many. by_call: per kind of call (`"Tensor.item"`, `"Tensor.__getitem__[bool mask]"`, ...).
    by_site: per kind and `file:line` that made them (the first frame outside torch), to find them.
    A counter may be entered again; counts add up until `reset()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_call: Counter[str] = Counter()
        self.by_site: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.by_call.values())

    def reset(self) -> None:
        self.by_call.clear()
        self.by_site.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        classify = _CLASSIFIERS.get(func)
        name = classify(args, kwargs) if classify is not None else None
        if name is not None:
            self.by_call[name] += 1
            self.by_site[f"{name} @ {_caller()}"] += 1
        host = _makes_host_tensors(func, args, kwargs)
        result = func(*args, **kwargs)
        if result is (args[0] if args else None) and func in (Tensor.to, Tensor.cpu) and host != _is_host(result):
            result = result.view_as(result)  # on a CPU `.cpu()` returns its input: mark a copy, as on a GPU
        if host:
            for tensor in _tensors(result):
                try:
                    setattr(tensor, _HOST, True)
                except (AttributeError, RuntimeError):  # a tensor subclass without a __dict__
                    pass
        return result


__all__ = ["HostSyncCounter"]
