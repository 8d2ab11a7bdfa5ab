"""Number formatting shared by the pages."""

from __future__ import annotations


def bytes_text(n: float) -> str:
    """Binary units: 1536 -> '1.5 KiB', 4 * 1024**3 -> '4.00 GiB'."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "bytes":
                return f"{value:,.0f} bytes"
            return f"{value:,.2f} {unit}" if unit in ("GiB", "TiB") else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.2f} TiB"  # pragma: no cover


def seconds(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s < 1 else f"{s:,.2f} s"


def ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "∞"
