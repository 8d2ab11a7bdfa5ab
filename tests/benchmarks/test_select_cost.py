"""`python -m benchmarks.select_cost` and the scale run's new driver, on the tiny random model (seconds)."""

from __future__ import annotations

import json
import math

import pandas as pd

from benchmarks.grid import parse_policies
from benchmarks.scale import measure_scale
from benchmarks.select_cost import default_policies, main


def test_default_policies_are_every_builtin_and_kvcrush_over_three_bases():
    assert default_policies() == ["full", "random", "streaming", "h2o", "snapkv", "pyramidkv", "tova", "knorm",
                                  "keydiff", "kvcrush:snapkv:alternating", "kvcrush:h2o:alternating",
                                  "kvcrush:tova:alternating"]


def test_select_cost_writes_its_table(tmp_path):
    rows = main(["--model", "random:tiny", "--device", "cpu", "--lengths", "128", "256", "--repeats", "2",
                 "--out", str(tmp_path)])
    assert len(rows) == 2 * len(default_policies())
    frame = pd.read_csv(tmp_path / "select_cost.csv")
    for column in ("prefill_s", "first_score_s", "first_select_s", "first_s", "select_s", "first_pct", "select_pct"):
        assert frame[column].map(math.isfinite).all(), column
    assert (frame["prefill_s"] > 0).all()
    shared = frame.set_index(["length", "policy"])["scores_shared"]
    assert shared[(128, "pyramidkv")] and shared[(128, "kvcrush:snapkv:alternating")] and not shared[(128, "snapkv")]
    summary = json.loads((tmp_path / "select_cost.json").read_text())
    assert summary["targets"] == {"select_s": 0.3, "select_pct": 5.0, "length": 2048}
    assert "| 256 | kvcrush:tova:alternating |" in (tmp_path / "select_cost.md").read_text()


def test_scale_rows_share_one_prefill_and_carry_kvcrush_overhead(tiny_lm):
    specs = parse_policies(["snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv"])
    rows = measure_scale(tiny_lm, [160], specs, [0.25], seed=0, max_new_tokens=3, show_progress=False)
    assert [row["policy"] for row in rows] == ["kvpress:snapkv", "full", "snapkv", "kvcrush:snapkv:alternating"]
    crush = rows[-1]
    assert math.isfinite(crush["overhead_s"]) and math.isfinite(crush["overhead_pct"])
    assert all(row["prefill_s"] > 0 and math.isfinite(row["full_decode_ms_per_token"]) for row in rows)
    assert rows[0]["kv_fraction"] < 0.3 and rows[1]["kv_fraction"] == 1.0
