"""Every benchmark script's entry point: `--help` works, and the common flags come from one skeleton
(`benchmarks.cli`) with each script's own defaults."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from benchmarks import cli

SCRIPTS = ("run", "overhead", "quantized", "decode_memory", "select_cost", "gpu_check", "trace_size", "report")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_prints_its_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m benchmarks.{name}" in text and "--" in text


@pytest.mark.parametrize(("name", "flags"), [
    ("overhead", {"lengths": [1024, 2048, 4096], "repeats": 5, "budget": 0.25, "model": None}),
    ("quantized", {"budget": 0.25, "repeats": 3, "device": "cpu", "tokens": 2048, "samples": 5, "no_bf16": False}),
    ("decode_memory", {"budget": 512, "device": "cpu", "policies": ["snapkv", "kvcrush", "tova", "knorm"]}),
    ("select_cost", {"lengths": [1024, 2048, 4096], "repeats": 5, "budget": 0.25, "policies": None, "device": "auto",
                     "dtype": None, "threads": None, "seed": 0}),
    ("gpu_check", {"lengths": None, "budget": 0.25, "repeats": 3, "device": "cuda", "dtype": "bfloat16", "seed": 0,
                   "out": None, "tiny": False, "new_tokens": 16}),
    ("run", {"policies": None, "seed": 0, "model": None, "device": "auto", "dtype": None, "threads": None,
             "out": None, "window": 32, "shape": "llama-3-8b"}),
])
def test_the_scripts_keep_their_defaults(name, flags):
    args = importlib.import_module(f"benchmarks.{name}").build_parser().parse_args([])
    assert {key: getattr(args, key) for key in flags} == flags


def test_script_parser_adds_the_common_flags_in_order_and_refuses_unknown_ones():
    parser = cli.script_parser("demo", "First line.\nMore.", lengths=[1, 2], budget=0.5, out=Path("x"),
                               helps={"budget": "share kept"})
    assert parser.description == "First line."
    args = parser.parse_args(["--lengths", "3", "--out", "y"])
    assert args.lengths == [3] and args.budget == 0.5 and args.out == Path("y")
    text = parser.format_help()
    assert text.index("--lengths") < text.index("--budget") < text.index("--out") and "share kept" in text
    assert "prompt tokens (default 1 2)" in text
    with pytest.raises(ValueError, match="not a common flag"):
        cli.script_parser("demo", "doc", tokens=5)


def test_write_outputs_writes_csv_strict_json_and_markdown(tmp_path):
    rows = [{"a": 1.23456789, "b": math.nan}]
    out = cli.write_outputs(tmp_path / "new", "demo", rows, {"rows": rows, "path": tmp_path}, "# Title")
    assert (out / "demo.csv").read_text() == "a,b\n1.23457,\n"
    assert json.loads((out / "demo.json").read_text()) == {"rows": [{"a": 1.23456789, "b": None}],
                                                           "path": str(tmp_path)}
    assert (out / "demo.md").read_text() == "# Title\n"
    cli.write_outputs(out, "demo", rows, {}, "ends\n")
    assert (out / "demo.md").read_text() == "ends\n"
