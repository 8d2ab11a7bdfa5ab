"""`python -m benchmarks.quantized` end to end on the tiny random model: real bytes, NLL and decode rows."""

from __future__ import annotations

import json

from benchmarks import quantized


def test_quantized_benchmark_writes_its_tables(tmp_path):
    out = tmp_path / "quantized"
    assert quantized.main(["--model", "random:tiny", "--tokens", "1024", "--samples", "2", "--repeats", "1",
                           "--new-tokens", "2", "--no-bf16", "--out", str(out)]) == 0
    data = json.loads((out / "quantized.json").read_text())
    assert (out / "quantized.csv").exists() and "## Equal bytes" in (out / "quantized.md").read_text()

    sizes = {(row["system"], row["kv_bits"]): row["kv_bytes"] for row in data["bytes"]}
    for system in ("full", "snapkv", "kvcrush"):
        assert sizes[(system, 16)] > sizes[(system, 8)] > sizes[(system, 4)]
    assert sizes[("kvcrush rep4", 16)] < sizes[("kvcrush", 16)]  # cheaper representatives, same tokens

    nll = {(row["system"], row["kv_bits"]): row for row in data["nll"]}
    assert nll[("snapkv", 16)]["mean_diff_vs_16"] == 0 and nll[("snapkv", 8)]["n"] == 2

    # Equal bytes: nobody exceeds SnapKV's 4-bit bytes (per head and layer), fewer bits keep more tokens.
    reference = [row for row in data["samples"] if row["table"] == "equal_bytes"]
    for row in reference:
        assert row["kv_bytes"] <= row["budget_bytes_per_head"] * 2 * 2  # tiny: 2 layers x 2 KV heads
    kept = {row["system"]: row["kept_per_head"] for row in data["equal_bytes"]}
    assert kept["snapkv 16-bit"] < kept["snapkv 8-bit"] < kept["snapkv 4-bit"]

    decode = {(row["system"], row["kv_bits"]): row for row in data["decode"]}
    assert decode[("snapkv", 16)]["x_of_16_bit"] == 1.0 and decode[("kvcrush", 4)]["decode_ms_per_token"] > 0
