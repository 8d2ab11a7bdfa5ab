"""The quality-versus-bytes Pareto front on hand-made results, and where the report shows it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pandas as pd

from benchmarks import report
from benchmarks.chart import chart_html
from benchmarks.markdown import interval_text, markdown_table
from benchmarks.pareto import Point, front_markdown, front_rows, pareto_front, storage_text
from benchmarks.tables import render_markdown


def _row(policy: str, kv: float, score: float, task: str = "needle", engine: str = "ours", bits: int = 16,
         equal_bytes: bool = False, budget: float = 0.25, representative_bits: float = math.nan) -> dict:
    higher = task != "likelihood"
    return {"task": task, "dataset": "d", "policy": policy, "engine": engine, "budget": budget, "kv_bits": bits,
            "representative_bits": representative_bits, "equal_bytes": equal_bytes, "kv_fraction": kv,
            "kv_bytes_after": kv * 2**20, "kept_tokens": 10.0, "score": score, "score_low": score - 0.1,
            "score_high": score + 0.1, "score_name": "hit" if higher else "nll", "higher_is_better": higher, "n": 5}


def _results() -> pd.DataFrame:
    return pd.DataFrame([
        _row("full", 1.0, 0.9, budget=1.0),
        _row("snapkv", 0.25, 0.5),
        _row("snapkv~4", 0.07, 0.45, bits=4),
        _row("snapkv~4b", 0.24, 0.6, bits=4, equal_bytes=True),
        _row("h2o", 0.25, 0.55),                        # beaten by snapkv~4b: more bytes, lower score
        _row("h2o", 0.5, 0.6, budget=0.5),              # same score as snapkv~4b with more bytes
        _row("kvpress:snapkv", 0.5, 0.8, engine="kvpress", budget=0.5),
        _row("snapkv+qa", 0.1, 1.0),                    # query-aware: another setting, not on the front
        _row("tova", 0.05, math.nan),                   # no score: not a point
        # likelihood: lower is better
        _row("full", 1.0, 3.0, task="likelihood", budget=1.0),
        _row("snapkv", 0.25, 3.5, task="likelihood"),
        _row("snapkv~8b", 0.25, 3.4, task="likelihood", bits=8, equal_bytes=True),
        _row("kvcrush:snapkv:alternating:rep4~8b", 0.25, 3.4, task="likelihood", bits=8, equal_bytes=True,
             representative_bits=4),                    # ties snapkv~8b in both measures: listed after it
        _row("snapkv~4", 0.08, 3.6, task="likelihood", bits=4),
    ])


def test_front_keeps_what_nothing_beats_with_fewer_bytes():
    front = front_rows(_results())
    needle = [(r["policy"], r["budget"]) for r in front if r["task"] == "needle"]
    assert needle == [("snapkv~4", 0.25), ("snapkv~4b", 0.25), ("kvpress:snapkv", 0.5), ("full", 1.0)]
    likelihood = [r["policy"] for r in front if r["task"] == "likelihood"]
    assert likelihood == ["snapkv~4", "snapkv~8b", "full"]
    assert {r["candidates"] for r in front if r["task"] == "needle"} == {7}  # not +qa, not the NaN score
    first = front[0]
    assert (first["kv_bits"], first["equal_bytes"], first["score_low"]) == (4, False, 0.45 - 0.1)


def test_pareto_front_on_points():
    points = [Point(0.5, 1.0, "a"), Point(0.2, 0.5, "b"), Point(0.2, 0.7, "c"), Point(0.9, 0.9, "d"),
              Point(0.2, 0.7, "e")]
    assert [p.key for p in pareto_front(points, higher_is_better=True)] == ["c", "a"]
    assert [p.key for p in pareto_front(points, higher_is_better=False)] == ["b"]
    assert pareto_front([], higher_is_better=True) == []


def test_front_reads_results_without_storage_columns():
    old = _results().drop(columns=["kv_bits", "representative_bits", "equal_bytes"])
    old = old[~old["policy"].str.contains("~")]
    front = front_rows(old)
    assert {(r["kv_bits"], r["equal_bytes"]) for r in front} == {(16, False)}
    assert [r["policy"] for r in front if r["task"] == "needle"] == ["h2o", "kvpress:snapkv", "full"]


def test_storage_text_and_markdown_name_each_front_point():
    assert storage_text({"kv_bits": 16}) == "full precision"
    assert storage_text({"kv_bits": 8, "representative_bits": 4.0, "equal_bytes": True}) == \
        "8-bit + 4-bit reps, same bytes"
    assert storage_text({"kv_bits": 4, "representative_bits": 4, "equal_bytes": "False"}) == "4-bit"
    text = front_markdown(front_rows(_results()))
    assert "**needle / d** (hit, higher is better; 4 of 7 points on the front)" in text
    assert "| snapkv~4b | ours | 25% | 4-bit, same bytes | 24.000 |" in text
    assert "h2o" not in text and "snapkv+qa" not in text


def test_report_and_chart_show_the_front(tmp_path):
    results = _results()
    summary = {"pareto": front_rows(results), "environment": {}, "settings": {}, "durations_s": {"total": 1.0}}
    markdown = render_markdown(summary, results.assign(dense=math.nan, full_score=math.nan))
    assert "## Quality versus KV bytes (Pareto front)" in markdown and "4-bit, same bytes" in markdown
    chart = tmp_path / "chart.html"
    chart_html(results, chart, "test", embed_js=False)
    html = chart.read_text()
    assert "Pareto front" in html and '"snapkv~4b at 25%, 4-bit, same bytes"' in html


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (an import there hides a cycle)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_the_front_and_the_headline_do_not_import_the_report_back():
    """report imports pareto and verdicts (through tables and chart); their tables come from
    `benchmarks.markdown`, so no cycle."""
    folder = Path(report.__file__).parent
    for module in ("pareto", "verdicts", "markdown", "aggregate", "comparisons", "tables", "chart", "cli"):
        assert "benchmarks.report" not in _imported_modules(folder / f"{module}.py"), module
    assert report.markdown_table is markdown_table and report.interval_text is interval_text  # callers unchanged
