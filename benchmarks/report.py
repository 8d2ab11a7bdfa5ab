"""Write or re-render a quality run's results folder: ``python -m benchmarks.report DIR [--readme]``.

Files (all in one folder; `benchmarks/README.md` explains every column), by the module that produces them:

- ``results.csv``: one row per task x dataset x policy x budget, averaged over samples (and lengths);
  ``breakdown.csv``: the same per context length (`benchmarks.aggregate`, pandas groupby-agg).
- ``samples.csv``: one row per run (every sample, policy, budget), with the generated text.
- ``parity.csv``: kept-token overlap of our policies with their kvpress counterparts on one prompt.
- ``overhead.csv``, ``scale.csv``: KVCrush's overhead over its base policy; random-weight timing and memory.
- ``summary.json``: settings, seeds, paired comparisons (`benchmarks.comparisons`), the best systems, memory,
  overhead, durations and the environment.
- ``report.md`` (`benchmarks.tables`), ``chart.html`` (`benchmarks.chart`: score versus budget per policy, and
  versus the KV bytes kept with the Pareto front, `benchmarks.pareto`), ``environment.json``.

`rerender` recomputes every derived file of a folder from its ``samples.csv``; `update_readme` writes the
README's benchmark headline (`benchmarks.verdicts`) from a summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.aggregate import (
    BREAKDOWN_COLUMNS,
    RESULT_COLUMNS,
    breakdown_table,
    memory_summary,
    paper_target,
    read_samples,
    results_table,
)
from benchmarks.chart import chart_html
from benchmarks.cli import write_csv, write_json
from benchmarks.comparisons import KVPRESS_COUNTERPART, best_systems, comparisons
from benchmarks.markdown import interval_text, markdown_table
from benchmarks.pareto import front_rows
from benchmarks.tables import best_table, render_markdown
from benchmarks.verdicts import headline_markdown, replace_headline

# Names callers outside this package read from here (ui/benchmarks.py: best_table; tests/policies:
# KVPRESS_COUNTERPART; benchmarks/trace_size.py: markdown_table, write_csv, write_json).
__all__ = ["KVPRESS_COUNTERPART", "best_table", "interval_text", "main", "markdown_table", "rerender",
           "update_readme", "write_csv", "write_json"]


def update_readme(summary: dict[str, Any], readme: Path | None = None) -> None:
    """Write the headline of `summary` into README.md between its markers (`benchmarks.verdicts`)."""
    readme = readme or Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(replace_headline(readme.read_text(), headline_markdown(summary)))


def rerender(folder: Path, embed_js: bool = True) -> str:
    """Recompute tables, comparisons, report.md and chart.html of a results folder from its samples.csv.

    Useful after changing the report code, or to re-read an old run: ``python -m benchmarks.report DIR``.
    """
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    records = read_samples(folder / "samples.csv")
    seed = int(summary.get("settings", {}).get("seed", 0))
    results = results_table(records, seed)
    summary.update(comparisons=comparisons(records), paper_target=paper_target(results),
                   best=best_systems(records, results), memory=memory_summary(records),
                   pareto=front_rows(results), results=results.to_dict(orient="records"))
    write_csv(folder / "results.csv", results, RESULT_COLUMNS)
    write_csv(folder / "breakdown.csv", breakdown_table(records, seed), BREAKDOWN_COLUMNS)
    write_json(folder / "summary.json", summary)
    markdown = render_markdown(summary, results)
    (folder / "report.md").write_text(markdown + "\n")
    model = summary.get("environment", {}).get("model", {}).get("name", "")
    chart_html(results, folder / "chart.html", f"KVCrush benchmark ({summary.get('mode', '')}, {model})", embed_js)
    return markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=rerender.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cdn-plotly", action="store_true", help="load plotly.js from its CDN (smaller file)")
    parser.add_argument("--readme", action="store_true", help="also write the headline into README.md")
    return parser


def main(argv: list[str] | None = None) -> str:
    """`python -m benchmarks.report DIR`: re-render DIR, print its report, and with ``--readme`` the headline."""
    arguments = build_parser().parse_args(argv)
    markdown = rerender(arguments.folder, not arguments.cdn_plotly)
    print(markdown)
    if arguments.readme:
        update_readme(json.loads((arguments.folder / "summary.json").read_text()))
    return markdown


if __name__ == "__main__":
    main()
