"""`python -m benchmarks.trace_size` on a short prompt: the bytes it reports are the trace's own."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmarks.trace_size import POLICIES, main


def test_trace_bytes_per_layer_and_per_field(tmp_path):
    out = main(["--lengths", "512", "--layers", "1", "--out", str(tmp_path)])
    rows = json.loads((out / "trace_size.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == list(POLICIES)
    for row in rows:
        assert row["bytes_per_layer"] == pytest.approx(sum(row["fields"].values()))
        assert row["trace_bytes"] == row["bytes_per_layer"] * row["layers"]
        assert row["kept_per_head"] == 128  # 25% of 512
    by_policy = {r["policy"]: r for r in rows}
    crushed, snapkv = by_policy["kvcrush"], by_policy["snapkv"]
    assert "packed_signatures" in crushed["fields"] and "packed_signatures" not in snapkv["fields"]
    assert "stored_scores" not in snapkv["fields"] and snapkv["shared_score_bytes_per_layer"] > 0
    assert by_policy["kvcrush"]["bytes_per_layer"] > by_policy["snapkv"]["bytes_per_layer"]
    table = pd.read_csv(out / "trace_size.csv")
    assert set(table["policy"]) == set(POLICIES) and (table["field_bytes_per_layer"] > 0).all()
    assert "| 512 | kvcrush |" in (out / "trace_size.md").read_text()
