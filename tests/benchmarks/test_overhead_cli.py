"""`python -m benchmarks.overhead` writes the overhead table on its own (tiny random model)."""

from __future__ import annotations

import json

from benchmarks import overhead


def test_overhead_command_writes_its_table(tmp_path):
    out = tmp_path / "overhead"
    assert overhead.main(["--model", "random:tiny", "--lengths", "128", "--repeats", "2", "--policies", "snapkv",
                          "kvcrush:snapkv:alternating", "--out", str(out)]) == 0
    rows = json.loads((out / "overhead.json").read_text())["rows"]
    by_policy = {row["policy"]: row for row in rows}
    assert set(by_policy) == {"full", "snapkv", "kvcrush:snapkv:alternating"}
    crush = by_policy["kvcrush:snapkv:alternating"]
    assert crush["repeats"] == 2 and crush["e2e_s"] > 0 and crush["overhead_pct_min"] <= crush["overhead_pct_max"]
    assert "kvcrush:snapkv:alternating" in (out / "overhead.md").read_text() and (out / "overhead.csv").exists()
