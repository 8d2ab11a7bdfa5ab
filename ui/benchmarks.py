"""Benchmark CSVs written under `benchmarks/` (by the benchmark scripts), newest first; the Sweep page opens on
the committed standard run's ``results/latest/results.csv`` (`default_csv`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent / "benchmarks"
FOLDER_ENV = "KVCRUSH_APP_BENCHMARKS"
X_GUESSES = ("budget_fraction", "budget", "compression", "kept_fraction", "context_tokens", "n_tokens")
Y_GUESSES = ("score", "accuracy", "needle_accuracy", "f1", "agreement", "token_agreement", "nll", "reference_nll")
FILTERS = ("task", "dataset", "length", "engine")  # one plot per value of these (e.g. results.csv has many tasks)


def folder() -> Path:
    """benchmarks/ next to the app, or KVCRUSH_APP_BENCHMARKS."""
    return Path(os.environ.get(FOLDER_ENV, ROOT)).expanduser()


def find_csvs(root: Path | None = None) -> list[Path]:
    root = folder() if root is None else root
    if not root.is_dir():
        return []
    return sorted(root.rglob("*.csv"), key=lambda p: p.stat().st_mtime, reverse=True)


# The committed standard run's aggregate table (benchmarks/results/latest, `python -m benchmarks.run --standard
# --publish`): every task, policy and budget with intervals. Newest-first alone opened on whatever CSV was
# touched last (a checkout's results/quantized/quantized.csv, one point per system).
STANDARD_CSV = Path("results") / "latest" / "results.csv"


def default_csv(files: list[Path], root: Path | None = None) -> Path | None:
    """The CSV the Sweep page opens on: `STANDARD_CSV` under `root` (default `folder()`) when it is among
    `files`, else the newest of them (None without any)."""
    if not files:
        return None
    standard = ((folder() if root is None else root) / STANDARD_CSV).resolve()
    return next((path for path in files if path.resolve() == standard), files[0])


def slug(path: Path) -> str:
    """A short stable name for widget keys."""
    return hashlib.sha1(str(path).encode()).hexdigest()[:10]


def load(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


LATEST = ROOT / "results" / "latest"


def latest_summary(root: Path | None = None) -> dict | None:
    """The committed benchmark run's summary.json (benchmarks/results/latest), or None."""
    import json

    path = (LATEST if root is None else root) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def latest_verdicts(summary: dict) -> str:
    """The committed run's verdicts and best-system table, as the report writes them (markdown)."""
    from benchmarks.report import best_table
    from benchmarks.verdicts import verdicts_markdown

    return verdicts_markdown(summary) + "\n\n### Best system per budget\n\n" + best_table(summary.get("best", []))


def guess(frame: pd.DataFrame) -> tuple[str | None, str | None, str | None]:
    """(x, y, colour) column guesses for a quality-versus-budget plot."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    x = next((c for c in X_GUESSES if c in numeric), numeric[0] if numeric else None)
    y = next((c for c in Y_GUESSES if c in numeric and c != x), next((c for c in numeric if c != x), None))
    color = "policy" if "policy" in frame.columns else None
    return x, y, color
