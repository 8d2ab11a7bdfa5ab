"""One entry-point skeleton for the benchmark scripts: the flags they share, and writing a run's files.

Every ``python -m benchmarks.NAME`` (run, overhead, quantized, decode_memory, select_cost, gpu_check, ...) starts
the same way: `script_parser` builds its parser from the module's docstring with the common flags it takes
(`COMMON_FLAGS`: ``--lengths``, ``--budget``, ``--model``, ``--device``, ``--seed``, ``--out``, ..., each with the
script's own default), the script adds its own flags, and `start` keeps freed memory for reuse
(`benchmarks.env.keep_freed_memory`), parses the command line and applies ``--threads``. At the end,
`write_outputs` writes ``NAME.csv`` (`write_csv`), ``NAME.json`` (`write_json`, strict JSON) and ``NAME.md``
into ``--out``.

A script adopts it in three lines::

    parser = script_parser("trace_size", __doc__, full_doc=True, lengths=list(LENGTHS), budget=0.25, out=OUT)
    args = start(parser, argv)
    write_outputs(args.out, "trace_size", rows, {"rows": rows, "settings": settings_dict(args)}, text)

Standard library only at import time (pandas is imported by `write_csv`, torch by `start`, on use), so
`benchmarks.gpu_check` can build its parser on a machine that lacks them and say which wheels to bring.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

MODEL_HELP = "default: the packaged SmolLM2-135M-Instruct"

# The flags the scripts share: name -> (argparse keywords, help; "{default}" is the script's default).
COMMON_FLAGS: dict[str, tuple[dict[str, Any], str]] = {
    "lengths": ({"type": int, "nargs": "+"}, "prompt tokens (default {default})"),
    "budget": ({"type": float}, "budget fraction (default {default})"),
    "repeats": ({"type": int}, "repeats, median reported (default {default})"),
    "policies": ({"nargs": "+"}, "policy specs (default {default})"),
    "model": ({}, MODEL_HELP),
    "layers": ({"type": int}, "random:SHAPE only: number of layers (default: the shape's)"),
    "device": ({}, "cpu, cuda or auto (default {default})"),
    "dtype": ({}, "default: bf16 on CUDA, fp32 on CPU"),
    "threads": ({"type": int}, "torch CPU threads (default: torch's choice)"),
    "seed": ({"type": int}, "seed (default {default})"),
    "out": ({"type": Path}, "output folder (default {default})"),
}


def _default_text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def script_parser(module: str, doc: str, full_doc: bool = False, helps: dict[str, str] | None = None,
                  **common: Any) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks.<module>`` with the common flags named in `common`, in that order.

    `doc`: the module's docstring, whole as the description (`full_doc`, kept as written) or its first line.
    `common`: flag name (`COMMON_FLAGS`, underscores for dashes) -> the script's default; `helps` replaces a
    flag's generic help. The script adds its own flags to the parser returned.
    """
    if full_doc:
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n")[0])
    helps = helps or {}
    for name, default in common.items():
        if name not in COMMON_FLAGS:
            raise ValueError(f"{name!r} is not a common flag; choose from {', '.join(COMMON_FLAGS)}.")
        keywords, text = COMMON_FLAGS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", default=default, **keywords,
                            help=helps.get(name, text.format(default=_default_text(default))))
    return parser


def start(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """What every benchmark does first: keep freed memory for reuse (timings without the page faults of
    re-allocated tensors, `benchmarks.env`), parse `argv` (None: ``sys.argv``), set torch's CPU threads when
    ``--threads`` is given."""
    from benchmarks.env import keep_freed_memory

    keep_freed_memory()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return args


def settings_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as the ``settings`` of a run's JSON (``out`` as a string)."""
    return vars(args) | {"out": str(args.out)}


# --- files ---------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean(value: Any) -> Any:
    """NaN/inf to None so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False) + "\n")


def write_csv(path: Path, rows: Any, columns: list[str] | None = None, precise: bool = False) -> None:
    """CSV of a list of row dicts or a DataFrame, with 6 significant digits, or every digit (`precise`, for
    samples.csv, which re-renders read)."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if columns is not None:
        frame = frame.reindex(columns=columns)
    frame.to_csv(path, index=False, float_format=None if precise else "%.6g")


def write_outputs(out: Path, name: str, rows: Any, data: dict[str, Any], text: str,
                  columns: list[str] | None = None) -> Path:
    """A script's three files in `out` (created): ``name.csv`` (`rows`, `columns`), ``name.json`` (`data`) and
    ``name.md`` (`text`, ending in one newline)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{name}.csv", rows, columns)
    write_json(out / f"{name}.json", data)
    (out / f"{name}.md").write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return out


__all__ = ["COMMON_FLAGS", "MODEL_HELP", "script_parser", "settings_dict", "start", "write_csv", "write_json",
           "write_outputs"]
