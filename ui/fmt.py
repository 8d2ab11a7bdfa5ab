"""Number formatting shared by the pages."""

from __future__ import annotations


def seconds(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s < 1 else f"{s:,.2f} s"


def ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "∞"
