"""One byte formatter for the library's messages and the explorer's numbers."""

from __future__ import annotations

import pytest

from kvcrush.sizes import format_bytes


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 bytes"), (512, "512 bytes"), (1023, "1,023 bytes"), (1536, "1.5 KiB"), (5 * 1024**2, "5.0 MiB"),
    (3 * 1024**3, "3.00 GiB"), (4.5 * 1024**3, "4.50 GiB"), (2**48, "256.00 TiB"), (5000 * 1024**4, "5,000.00 TiB"),
])
def test_binary_units_with_two_decimals_from_gib_up(n, text):
    assert format_bytes(n) == text
