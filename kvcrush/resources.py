"""Where the explorer's files are, in a checkout and in an installed `kvcrush-explorer` wheel.

The repository keeps the explorer at its top level (``app.py``, ``pages/``, ``ui/``, ``assets/``,
``.streamlit/config.toml``, ``benchmarks/``), next to the ``kvcrush/`` library. Installed as they are, ``ui``,
``pages`` and ``benchmarks`` would become generic top-level modules in site-packages, so the wheel moves them
into one folder of their own (``pyproject.toml``: ``package-dir`` maps the repository root to
``kvcrush_explorer``)::

    site-packages/kvcrush/                          the library (and the `kvcrush` console script's code)
    site-packages/kvcrush_explorer/app.py           the explorer, laid out exactly as in the checkout
    site-packages/kvcrush_explorer/pages/, ui/, assets/, .streamlit/config.toml, benchmarks/

``kvcrush app`` runs ``streamlit run kvcrush_explorer/app.py``: Streamlit puts the script's folder first on the
server's ``sys.path`` (so ``import ui`` and ``import benchmarks`` resolve inside it, and only there) and reads
the ``.streamlit/config.toml`` next to the script (its "script-level" config file, Streamlit >= 1.46), so the
explorer's server settings apply from any working directory. ``kvcrush bench`` puts the same folder on the
path of its child process. Every path the explorer uses relative to ``app.py`` (pages, assets, the committed
benchmark results) is then the same in both layouts.

What is written goes to a user folder when it would otherwise land inside site-packages:
`bench_results_dir` (the converted model already lives in ``kvcrush.paths.cache_dir()``).
"""

from __future__ import annotations

import os
from pathlib import Path

from kvcrush.paths import cache_dir

PACKAGE_FOLDER = "kvcrush_explorer"  # the explorer's folder in an installed wheel (pyproject.toml)
# What makes a folder the explorer: the entry point and the folders it imports and runs.
_EXPLORER_FILES = ("app.py",)
_EXPLORER_FOLDERS = ("pages", "ui", "assets", "benchmarks")


def _is_explorer(folder: Path) -> bool:
    return (all((folder / name).is_file() for name in _EXPLORER_FILES)
            and all((folder / name).is_dir() for name in _EXPLORER_FOLDERS))


def _library_parent() -> Path:
    return Path(__file__).resolve().parent.parent


def is_checkout(folder: Path) -> bool:
    """True for a source checkout (the explorer beside `kvcrush/` and `pyproject.toml`), as opposed to the
    folder an installed wheel holds."""
    return _is_explorer(folder) and (folder / "pyproject.toml").is_file() and (folder / "kvcrush").is_dir()


def find_explorer_root() -> Path | None:
    """The folder holding ``app.py``, ``pages/``, ``ui/``, ``assets/``, ``.streamlit/`` and ``benchmarks/``,
    or None.

    The checkout this `kvcrush` was imported from (a source tree or an editable install) comes first; else the
    ``kvcrush_explorer`` folder installed beside `kvcrush` by the wheel.
    """
    parent = _library_parent()
    if is_checkout(parent):
        return parent
    installed = parent / PACKAGE_FOLDER
    return installed if _is_explorer(installed) else None


def explorer_root() -> Path:
    """`find_explorer_root`, or FileNotFoundError saying what is missing."""
    root = find_explorer_root()
    if root is None:
        raise FileNotFoundError(
            f"The explorer's files (app.py, pages/, ui/, assets/, benchmarks/) are neither beside "
            f"{Path(__file__).resolve().parent} (a checkout) nor in {_library_parent() / PACKAGE_FOLDER} (an "
            f"installed kvcrush-explorer). Reinstall the package (pip install kvcrush-explorer's wheel or `pip "
            f"install .` in the checkout)."
        )
    return root


def bench_results_dir(root: Path | None = None) -> Path:
    """Where `kvcrush bench` writes results by default.

    A checkout keeps its own ``benchmarks/results`` (what ``python -m benchmarks.run`` uses) when it can write
    there. An installed package never writes into site-packages: its runs go to
    ``<kvcrush cache>/benchmarks/results`` (``$KVCRUSH_CACHE``, default ``~/.cache/kvcrush``, the folder that
    holds the converted model), and ``KVCRUSH_APP_BENCHMARKS=<kvcrush cache>/benchmarks kvcrush app`` shows them.
    """
    root = explorer_root() if root is None else root
    if is_checkout(root) and os.access(root / "benchmarks", os.W_OK):
        return root / "benchmarks" / "results"
    return cache_dir() / "benchmarks" / "results"
