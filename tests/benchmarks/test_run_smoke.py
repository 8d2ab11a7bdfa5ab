"""Smoke test of the benchmark's quick path: random tiny model, two samples, a tiny grid (< 60 s).

The benchmark itself is not part of the test suite; this only checks that one command produces every
file with the documented columns, rows for both engines, finite numbers and kept fractions that
match the budget.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from benchmarks import report
from benchmarks.run import main

BUDGET = 0.5
POLICIES = ["snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv", "streaming", "kvpress:streaming"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    main([
        "--quick", "--model", "random:tiny", "--device", "cpu", "--samples", "2", "--budgets", str(BUDGET),
        "--policies", *POLICIES, "--needle-lengths", "256", "--needle-depths", "0.5",
        "--likelihood-context", "256", "--overhead-lengths", "128", "--new-tokens", "4",
        "--out", str(out), "--no-progress",
    ])
    return out


def test_our_runs_share_one_prefill_per_item(out_dir):
    samples = pd.read_csv(out_dir / "samples.csv")
    ours = samples[(samples["engine"] == "ours") & (samples["policy"] != "full")]
    assert ours["prefill_reused"].astype(bool).all()
    kvpress = samples[samples["engine"] == "kvpress"]
    assert not kvpress["prefill_reused"].astype(bool).any()


def test_every_file_is_written(out_dir):
    for name in ("results.csv", "breakdown.csv", "samples.csv", "parity.csv", "overhead.csv", "summary.json",
                 "report.md", "chart.html", "environment.json"):
        assert (out_dir / name).is_file(), name
        assert (out_dir / name).stat().st_size > 0, name
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["mode"] == "quick" and summary["settings"]["seed"] == 0
    assert summary["errors"] == []
    assert "plotly" in (out_dir / "chart.html").read_text().lower()


def test_results_csv_has_both_engines_and_finite_numbers(out_dir):
    results = pd.read_csv(out_dir / "results.csv")
    assert list(results.columns) == report.RESULT_COLUMNS
    assert set(results["engine"]) == {"ours", "kvpress"}
    assert set(results["task"]) == {"needle", "likelihood", "agreement"}
    assert set(results["policy"]) == {"full", *POLICIES}
    for task in ("needle", "likelihood", "agreement"):
        rows = results[results["task"] == task]
        assert len(rows) == 1 + len(POLICIES)  # one budget plus the full reference
        assert (rows["n"] == 2).all()
    for column in ("score", "full_score", "kv_fraction", "prefill_s", "kv_bytes_before", "kv_bytes_after"):
        assert results[column].map(math.isfinite).all(), column
    compressed = results[results["policy"] != "full"]
    assert ((compressed["kv_fraction"] - BUDGET).abs() < 0.02).all()
    assert (results[results["policy"] == "full"]["kv_fraction"] == 1.0).all()
    nll = results[results["task"] == "likelihood"]
    assert (nll["score_name"] == "nll").all() and (nll["score"] > 0).all()


def test_comparisons_overhead_and_parity(out_dir):
    summary = json.loads((out_dir / "summary.json").read_text())
    verdicts = summary["comparisons"]["kvcrush_vs_base"]
    assert {row["task"] for row in verdicts} == {"needle", "likelihood", "agreement"}
    assert all(row["verdict"] in ("win", "tie", "lose") for row in verdicts)
    assert {row["versus"] for row in summary["comparisons"]["parity"]} == {"kvpress:snapkv", "kvpress:streaming"}
    overhead = pd.read_csv(out_dir / "overhead.csv")
    assert set(overhead["policy"]) == {"full", "kvcrush:snapkv:alternating"}
    assert overhead["crush_pct"].map(math.isfinite).all()
    crush = overhead[overhead["policy"] == "kvcrush:snapkv:alternating"].iloc[0]
    for column in ("policy_s", "base_policy_s", "overhead_s", "overhead_pct", "e2e_s"):
        assert math.isfinite(crush[column]), column
    assert crush["overhead_s"] == pytest.approx(crush["policy_s"] - crush["base_policy_s"], abs=1e-6)
    assert "overhead %" in (out_dir / "report.md").read_text()
    parity = pd.read_csv(out_dir / "parity.csv")
    assert ((parity["jaccard"] >= 0) & (parity["jaccard"] <= 1)).all()
    streaming = parity[parity["ours"] == "streaming"]["jaccard"]
    assert (streaming > 0.95).all()  # same rule on both sides, one token of rounding apart
