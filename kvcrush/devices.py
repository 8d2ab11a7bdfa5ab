"""Where a model's layers live, waiting for them, and what to do when one runs out of memory.

A model may sit on one device or be sharded over several GPUs (`load_model(device_map="auto")`, which
transformers hands to accelerate): its embedding on the first GPU, each decoder layer (with its KV cache
rows) on the GPU it was placed on, the LM head on the last. The engine keeps every per-layer tensor on
its layer's device (`LayerInputs.keys.device`); this module answers the questions that span devices:
which devices a model uses (`model_devices`, `layer_devices`), waiting for all of them before a clock is
read (`synchronize`), what a device can still hold (`free_bytes`, counting the memory the CUDA caching
allocator holds but does not use), and turning an out-of-memory or CUDA error into a message a person
can act on, with the memory given back first (`releases_memory_on_error`).
"""

from __future__ import annotations

import functools
import gc
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from kvcrush.errors import ResourceError
from kvcrush.sizes import format_bytes

__all__ = ["ResourceError", "model_devices", "layer_devices", "synchronize", "Stopwatch", "free_bytes",
           "release_memory",
           "device_choices", "memory_report", "out_of_memory_message", "releases_memory_on_error"]

Function = TypeVar("Function", bound=Callable[..., Any])


def _as_device(value: Any) -> torch.device | None:
    """A device from what accelerate's device maps hold: an int (a GPU index), 'cpu', 'cuda:1'; 'disk' is none."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, int):
        return torch.device("cuda", value)
    if isinstance(value, str) and value not in ("disk", "meta"):
        return torch.device(value)
    return None


def model_devices(model: Any) -> tuple[torch.device, ...]:
    """Every device `model` (an `nn.Module`, or anything with `.model`) has weights on, in first-use order."""
    module = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    device_map = getattr(module, "hf_device_map", None)
    if device_map:
        found = [_as_device(value) for value in device_map.values()]
    else:
        found = [getattr(module, "device", None)]
    devices: list[torch.device] = []
    for device in found:
        if device is not None and device not in devices:
            devices.append(device)
    return tuple(devices) or (torch.device("cpu"),)


def layer_devices(model: Any) -> list[torch.device]:
    """The device of every decoder layer's attention (`[n_layers]`): where that layer's KV cache rows live."""
    from kvcrush.attention import attention_modules

    module = getattr(model, "model", model) if not isinstance(model, torch.nn.Module) else model
    return [next(attention.parameters()).device for attention in attention_modules(module)]


def _devices_of(targets: Iterable[Any]) -> list[torch.device]:
    devices: list[torch.device] = []
    for target in targets:
        if isinstance(target, (torch.device, str)):
            found: Iterable[torch.device] = [torch.device(target)]
        elif isinstance(target, torch.nn.Module) or hasattr(target, "model"):
            found = model_devices(target)
        else:
            found = _devices_of(target)
        devices.extend(device for device in found if device not in devices)
    return devices


def synchronize(*targets: Any) -> None:
    """Wait for the queued work of every CUDA device among `targets`, so a `perf_counter` time covers it.

    A target is a device, a model (every device it has weights on: a sharded model's layers run on several
    GPUs, and waiting for the first alone would time only part of the work) or an iterable of either.
    No-op on the CPU.
    """
    for device in _devices_of(targets):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds of work on some devices, summed over timed blocks: `with watch.timing(): ...`.

    Each block waits for the devices' queued work before it starts the clock (earlier work is not its time) and
    before it reads it (its own work is), so on a GPU the seconds cover the kernels the block launched, not only
    the Python that launched them. `targets` as for `synchronize`: devices, models, or iterables of them.
    """

    def __init__(self, *targets: Any) -> None:
        self.targets = targets
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[Stopwatch]:
        synchronize(*self.targets)
        start = time.perf_counter()
        yield self
        synchronize(*self.targets)  # not on an error: a failed device would only raise again
        self.seconds += time.perf_counter() - start


def free_bytes(device: torch.device | str) -> int | None:
    """Bytes a run may still allocate on a CUDA `device`: the driver's free memory plus what this process's
    caching allocator holds without using (reserved - allocated), which it hands out again before asking the
    driver for more. Memory an earlier run freed thus counts as free. None for other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, AssertionError):
        return None
    return int(free + max(0, cached))


def release_memory(devices: Iterable[torch.device] = ()) -> None:
    """Collect what Python no longer references now, and on CUDA give the allocator's unused blocks back to the
    driver, so the next run (and other processes) find the memory."""
    gc.collect()
    if any(torch.device(device).type == "cuda" for device in devices) and torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_choices() -> list[str]:
    """The device settings a person can pick here: 'auto' (a GPU when there is one), 'cpu', 'cuda' with a GPU,
    and 'all-gpus' (the model sharded over every GPU, `device_map="auto"`) with more than one."""
    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
        if torch.cuda.device_count() > 1:
            choices.append("all-gpus")
    return choices


def memory_report(devices: Iterable[torch.device]) -> str:
    """One line per CUDA device: free of total, and what this process holds (allocated / reserved)."""
    lines = []
    for device in devices:
        if torch.device(device).type != "cuda":
            continue
        try:
            free, total = torch.cuda.mem_get_info(device)
            allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        except (RuntimeError, AssertionError):
            continue
        lines.append(f"{device}: {format_bytes(free)} free of {format_bytes(total)}; this process holds "
                     f"{format_bytes(allocated)} in tensors and {format_bytes(reserved)} reserved")
    return "; ".join(lines)


_CPU_ALLOCATION = re.compile(r"tried to allocate (\d+) bytes", re.IGNORECASE)
_CUDA_ALLOCATION = re.compile(r"tried to allocate ([\d.]+ [KMGT]?i?B)", re.IGNORECASE)


def out_of_memory_message(error: BaseException, what: str, devices: Iterable[torch.device]) -> str | None:
    """A message for an allocation failure or a CUDA error raised while doing `what`; None for other errors.

    CUDA: `torch.OutOfMemoryError` ("CUDA out of memory. Tried to allocate 2.00 GiB ..."). CPU: the default
    allocator's RuntimeError ("... can't allocate memory: you tried to allocate N bytes"), or Python's
    MemoryError. Other CUDA errors (a device-side assert, an illegal address) leave the device's context
    unusable, which the message says.
    """
    text = str(error)
    devices = list(devices)
    report = memory_report(devices)
    numbers = f" Memory now: {report}." if report else ""
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower():
        asked = _CUDA_ALLOCATION.search(text)
        size = f" (it asked for {asked.group(1)} more)" if asked else ""
        return (f"Out of GPU memory while {what}{size}.{numbers} What the run had allocated was given "
                "back; try a shorter prompt, fewer new tokens, or a smaller model.")
    if isinstance(error, MemoryError) or "can't allocate memory" in text.lower():
        asked = _CPU_ALLOCATION.search(text)
        size = f" (it asked for {format_bytes(int(asked.group(1)))})" if asked else ""
        return (f"Out of memory while {what}{size}. What the run had allocated was given back; "
                "try a shorter prompt, fewer new tokens, or a smaller model.")
    if isinstance(error, RuntimeError) and ("CUDA error" in text or "CUBLAS_STATUS" in text
                                            or "cuDNN error" in text):
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return (f"The GPU failed while {what}: {first}.{numbers} After such an error the GPU's context may be "
                "unusable: if the next run fails too, restart the app.")
    return None


def releases_memory_on_error(what: str) -> Callable[[Function], Function]:
    """Decorate an engine entry point (its first argument a `LoadedModel`, or an object with `.lm`): an
    out-of-memory or CUDA error inside it becomes a `ResourceError` (`out_of_memory_message`), raised only
    after the failed call's frames, and so its tensors, are gone and the allocator's cache is emptied."""

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def guarded(owner: Any, *args: Any, **kwargs: Any) -> Any:
            lm = getattr(owner, "lm", owner)
            try:
                return function(owner, *args, **kwargs)
            except (RuntimeError, MemoryError) as error:
                devices = model_devices(lm.model)
                message = out_of_memory_message(error, what, devices)
                if message is None:
                    raise
            # Outside the `except` block the error and its traceback (which holds the failed frames' tensors)
            # are unreferenced, so they are freed before the cache is emptied.
            release_memory(devices)
            raise ResourceError(message)

        return guarded  # type: ignore[return-value]

    return decorate
