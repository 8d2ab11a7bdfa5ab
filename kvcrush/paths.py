"""Where the library keeps what it makes on disk: one folder, `$KVCRUSH_CACHE` (default `~/.cache/kvcrush`).

Converted models (`kvcrush.models.packaged_copy`), the model folders allowed by default (`kvcrush.limits`) and the
installed package's benchmark results (`kvcrush.resources`) all live under it. A module of its own, importing
nothing of the library, so that any of them can read it at import time without an import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KVCRUSH_CACHE"


def cache_dir() -> Path:
    """`$KVCRUSH_CACHE`, default `~/.cache/kvcrush` (read at each call: tests and operators may change it)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "kvcrush")).expanduser()


__all__ = ["CACHE_ENV", "cache_dir"]
