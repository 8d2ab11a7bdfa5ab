"""Byte counts as people read them: one formatter for the library's messages and the explorer's numbers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: float) -> str:
    """Binary units: `512 -> '512 bytes'`, `1536 -> '1.5 KiB'`, `4 * 1024**3 -> '4.00 GiB'` (two decimals from GiB
    up, where a tenth is hundreds of megabytes)."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            if unit == "bytes":
                return f"{value:,.0f} bytes"
            return f"{value:,.2f} {unit}" if unit in ("GiB", "TiB") else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def unique_nbytes(tensors: Iterable[Any]) -> int:
    """Bytes of the storage behind `tensors`, each storage counted once: a view (a slice, a trace's scores read
    from a prepared prompt's) costs what the storage it keeps alive holds, and two views of one storage cost it
    once. Meta tensors hold nothing."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        if tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


__all__ = ["format_bytes", "unique_nbytes"]
