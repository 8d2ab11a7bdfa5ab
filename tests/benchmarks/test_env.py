"""The benchmark environment: glibc keeps freed memory for reuse, and the record says so."""

from __future__ import annotations

import platform

import pytest
import torch

from benchmarks.env import environment, keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_taken_and_recorded():
    assert keep_freed_memory() is True
    assert environment()["allocator_keeps_freed_memory"] is True
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's default mmap threshold: now from the heap
    assert float(big.sum()) == big.numel()
