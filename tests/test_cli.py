"""The command line on the tiny model: output, JSON, and clear errors (exit 2, no traceback)."""

import json
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kvcrush", "generate", "--model", "random:tiny", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_cli_json_output(tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("The quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    completed = run_cli("--prompt-file", str(prompt), "--policy", "kvcrush", "--base", "h2o", "--budget", "25%",
                        "--anchor", "mean", "--max-new-tokens", "3", "--json")
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["trace"]["policy"]["name"] == "kvcrush" and data["trace"]["policy"]["anchor"] == "mean"
    assert 0.24 < data["kv_bytes_after"] / data["kv_bytes_before"] < 0.27


def test_cli_table_output():
    completed = run_cli("--prompt", "Tell me a story about a cat. " * 10, "--policy", "snapkv", "--budget", "0.5",
                        "--max-new-tokens", "2")
    assert completed.returncode == 0, completed.stderr
    for row in ("KV bytes before", "KV bytes after", "prefill", "select", "decode"):
        assert row in completed.stdout


def test_cli_bad_budget_is_a_clear_error():
    completed = run_cli("--prompt", "hello world", "--budget", "abc")
    assert completed.returncode == 2
    assert "error: Budget 'abc' is not a number" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_every_declared_option_is_a_flag_with_its_help():
    from kvcrush.cli import build_parser
    from kvcrush.policies import POLICIES
    from kvcrush.policies.options import declared_options

    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for cls in POLICIES.values():
        for spec in declared_options(cls):
            assert spec.flag in text, spec.name


def test_cli_head_reduction_reaches_the_base_policy():
    completed = run_cli("--prompt", "Tell me a story about a cat. " * 20, "--policy", "kvcrush", "--base", "tova",
                        "--head-reduction", "all", "--window", "8", "--max-new-tokens", "1", "--json")
    assert completed.returncode == 2 and "tova does not take window" in completed.stderr
    completed = run_cli("--prompt", "Tell me a story about a cat. " * 20, "--policy", "kvcrush", "--base", "tova",
                        "--head-reduction", "all", "--max-new-tokens", "1", "--json")
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)
    assert data["trace"]["policy"]["base"]["head_reduction"] == "all"
    assert all(len({tuple(row) for row in layer["kept"]}) == 1 for layer in data["trace"]["layers"])
