"""`python -m benchmarks.gpu_check --tiny`: the GPU acceptance script's own code, end to end on the CPU.

The run happens once, in a fresh interpreter, as it does on the GPU machine: in this test process other tests
may already have imported streamlit or plotly, which the script's import check must not see (on the GPU
machine they are not installed).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_measure import PARITY_GENERATE, policy_specs
from kvcrush.models.shapes import shape_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    # How fast --tiny runs is the script's own "time" check on a quiet machine; the suite only needs it to finish.
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--time-limit", "400", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    with (out / "gpu_check.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (out / "parity.csv").open() as handle:
        parity = list(csv.DictReader(handle))
    return {"done": done, "out": out, "rows": rows, "parity": parity,
            "summary": json.loads((out / "gpu_check.json").read_text())}


def test_tiny_run_passes_every_check(tiny_run):
    done = tiny_run["done"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    checks = {check["name"]: check for check in tiny_run["summary"]["checks"]}
    assert set(checks) == {"imports", "256 tokens", "768 tokens", "CPU versus device parity", "time"}
    assert all(check["passed"] for check in checks.values()), checks
    assert "streamlit" in checks["imports"]["detail"] and "kvpress" in checks["imports"]["detail"]
    assert "every check passed" in done.stdout and "[" in done.stdout.splitlines()[0]  # progress with elapsed time


def test_table_has_one_row_per_length_and_policy_with_its_fields(tiny_run):
    rows = tiny_run["rows"]
    labels = list(policy_specs())
    assert list(rows[0]) == list(gpu_check.ROW_FIELDS)
    for length in gpu_check.TINY_LENGTHS:
        mine = [row for row in rows if int(row["length"]) == length]
        assert [row["policy"] for row in mine] == ["(prefill)", *labels]
        assert all(row["status"] == "ok" and not row["problems"] and not row["error"] for row in mine)
        prefill = float(mine[0]["prefill_s"])
        assert prefill > 0 and all(float(row["prefill_s"]) == prefill for row in mine)
        for row in mine[1:]:
            assert float(row["select_ms"]) > 0 and float(row["decode_ms_per_token"]) > 0
            assert 1 <= int(row["decode_tokens"]) <= 16
            assert float(row["estimate_gib"]) > 0
            is_kvcrush = row["policy"].startswith("kvcrush:")
            assert (row["kvcrush_extra_pct"] != "") == is_kvcrush and (row["base_select_ms"] != "") == is_kvcrush
        if importlib.util.find_spec("kvcrush.syncs") is not None:  # host syncs are counted on the CPU too
            assert all(row["select_syncs"] != "" and row["generate_syncs"] != "" for row in mine[1:])
        by_label = {row["policy"]: row for row in mine}
        assert float(by_label["full"]["kv_ratio"]) == 1.0
        assert float(by_label["snapkv"]["kv_ratio"]) == pytest.approx(0.25, abs=1 / length)
        assert float(by_label["snapkv~4"]["kv_ratio"]) < float(by_label["snapkv"]["kv_ratio"])  # 4-bit rows
    # The longer prompt keeps only its last hidden rows (as 32k does on a GPU), so H2O prefills a second time.
    assert [(int(r["length"]), int(r["hidden_rows"])) for r in rows if r["policy"] == "(prefill)"] == [(256, 256),
                                                                                                      (768, 512)]
    h2o = {int(r["length"]): int(r["extra_prefills"]) for r in rows if r["policy"] == "h2o"}
    assert h2o == {256: 0, 768: 1}


def test_parity_compares_every_policy_and_the_greedy_answers(tiny_run):
    parity = tiny_run["parity"]
    assert [row["policy"] for row in parity] == list(policy_specs())
    assert all(row["status"] == "ok" and row["kept_equal"] == "True" for row in parity)
    answered = [row for row in parity if row["policy"] in PARITY_GENERATE]
    assert len(answered) == len(PARITY_GENERATE)
    assert all(row["tokens_equal"] == "True" and row["cpu_tokens"] == row["device_tokens"] != "" for row in answered)


def test_markdown_and_json_hold_the_same_rows(tiny_run):
    text = (tiny_run["out"] / "gpu_check.md").read_text()
    assert "## Checks" in text and "PASS imports" in text and "kvcrush:snapkv:alternating:kmeans4" in text
    summary = tiny_run["summary"]
    assert summary["mode"] == "gpu_check --tiny" and summary["environment"]["model"]["layers"] == 4
    assert len(summary["rows"]) == len(tiny_run["rows"]) and len(summary["parity"]) == len(tiny_run["parity"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "No CUDA device is visible" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_a_model_that_fails_to_load_is_recorded_and_fails_the_run(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--dtype", "float7", "--no-parity", "--out", str(tmp_path)]) == 1
    with (tmp_path / "gpu_check.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["policy"] == "(load)" and row["status"] == "error" and "float7" in row["error"]
    checks = {c["name"]: c["passed"] for c in json.loads((tmp_path / "gpu_check.json").read_text())["checks"]}
    assert checks["8192 tokens"] is False and checks["32768 tokens"] is False
    # In the suite other tests have imported streamlit, so "imports" may fail too: this run is in-process.
    failed = next(line for line in capsys.readouterr().out.splitlines() if "FAILED" in line)
    assert "8192 tokens, 32768 tokens" in failed


def test_the_checked_shape_is_llama_3_1_8b():
    config = shape_config("llama-3.1-8b")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (
        4096, 32, 32, 8, 14336, 128256, 131072)
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["rope_theta"], rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
            rope["original_max_position_embeddings"]) == ("llama3", 500000.0, 8.0, 1.0, 4.0, 8192)
