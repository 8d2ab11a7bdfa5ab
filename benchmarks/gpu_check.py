"""GPU acceptance check: every policy and KVCrush variant at Llama-3.1-8B's shape on one GPU, in minutes.

    python -m benchmarks.gpu_check                 # CUDA, random weights in Llama-3.1-8B's shape, bf16, 8k and 32k
    python -m benchmarks.gpu_check --long          # also 128k, if the time limit leaves room
    python -m benchmarks.gpu_check --tiny          # the same code on the CPU, a tiny model of the same family

Random weights in Llama-3.1-8B's shape (32 layers, 32 query / 8 KV heads, head dim 128, vocabulary 128256,
llama3 RoPE scaling to 128k positions; `kvcrush.models.shapes`), built directly on the GPU in bfloat16. Per
prompt length one random-token prompt (plus a 16-token question appended after eviction) is prefilled once;
then every policy of `benchmarks.gpu_measure.policy_specs` (the nine built-in policies, KVCrush over each of
them, every anchor, each option beyond the paper, 4-bit storage, decode-time eviction, head reduction) is
selected and answers 16 greedy tokens, with its timings, peak memory against the memory preflight's estimate,
host syncs and checks (`benchmarks.gpu_measure`). Then a 4-layer model of the same shape runs on the CPU and on
the GPU in float32, and their scores, kept sets and greedy tokens are compared.

Output (`--out`, default `benchmarks/results/gpu/`; `--tiny`: its `tiny/` subfolder): `gpu_check.csv` (one row
per length and policy, appended as each finishes, so a run cut short still leaves its rows), `parity.csv`,
`gpu_check.json` (settings, environment, rows, parity, checks) and `gpu_check.md` (rewritten after every
length). The exit status is 0 when every check passed, 1 when one failed, 2 when the machine cannot run it (no
GPU, missing wheels: the message says which to bring).

What this file imports at its top is the standard library only (and `benchmarks.cli`'s parser and
`benchmarks.markdown`'s tables, which are too), so that a machine without torch or transformers gets the list of
wheels to bring instead of a traceback; the engine is imported once they are found. Nothing it imports needs
streamlit, plotly or kvpress (a check of the run asserts that none was imported) or pandas: the tables are written
with `csv` and `json` rather than `benchmarks.cli.write_csv`, which needs pandas.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: CPU threads sleep between ops, not spin

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.cli import script_parser  # noqa: E402
from benchmarks.markdown import markdown_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "gpu"
MODEL = "random:llama-3.1-8b"
LENGTHS = (8192, 32768)
LONG_LENGTH = 131072 - 64  # 128k positions less the question, the answer and the reference tokens
TIME_LIMIT_S = 420.0  # no new step starts after this (the acceptance bound is 8 minutes on one H200)
ACCEPTANCE_S = 480.0
# The parity check runs last (a CUDA error there cannot cost the main table), so the lengths stop this much earlier:
# on an H200 host's 16 cores the CPU side's 1k-token prefill and six 16-token answers of the 4-layer model (about
# 6 GB of float32 weights read per token) take about a minute.
PARITY_RESERVE_S = 90.0
PARITY_LAYERS = 4
PARITY_TOKENS = 1024
WARM_UP_TOKENS = 256  # one discarded prompt first: CUDA kernels load and cuBLAS initialises on first use
# --tiny: the 8B shape scaled down (same family, rope scaling and vocabulary), on the CPU, a few hundred tokens.
# The hidden-state limit of 0 makes the longer prompt keep only its last rows, as 32k does on the GPU, so H2O
# takes the second-prefill path there too.
TINY_SHAPE = dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, intermediate_size=256,
                  num_hidden_layers=4)
TINY_LENGTHS = (256, 768)
TINY_PARITY_TOKENS = 256
TINY_TIME_LIMIT_S = 110.0
TINY_PARITY_RESERVE_S = 20.0
TINY_ACCEPTANCE_S = 120.0
FORBIDDEN_MODULES = ("streamlit", "plotly", "kvpress")  # absent on the GPU machine
MIN_TRANSFORMERS = (5, 2)
WHEELS = "torch (a CUDA build), transformers>=5.2 (tested 5.2.0 and 5.17.0) with its tokenizers, and numpy"

ROW_FIELDS = (
    "length", "policy", "status", "prefill_s", "hidden_rows", "score_ms", "score_shared", "extra_prefills",
    "first_select_ms", "select_ms", "base_select_ms", "kvcrush_extra_ms", "kvcrush_extra_pct", "decode_ms_per_token",
    "decode_tokens", "kv_bytes_before", "kv_bytes_after", "kv_ratio", "peak_gib", "peak_above_start_gib",
    "estimate_gib", "prefill_syncs", "first_select_syncs", "select_syncs", "generate_syncs", "syncs_per_token",
    "reference_nll", "problems", "error", "elapsed_s",
)
PARITY_FIELDS = ("policy", "status", "scores_max_rel_diff", "kept_equal", "tokens_equal", "cpu_tokens",
                 "device_tokens", "error", "seconds")


@dataclass
class Settings:
    """One run's shape and sizes (the GPU defaults, or --tiny's)."""

    tiny: bool
    device: str
    dtype: str
    lengths: list[int]
    optional_lengths: list[int]
    shape: dict[str, Any]
    budget: float
    new_tokens: int
    repeats: int
    seed: int
    time_limit_s: float
    acceptance_s: float
    parity: bool
    parity_tokens: int
    parity_reserve_s: float
    hidden_limit: int | None
    policies: list[str] | None = None
    out: Path = OUT

    @property
    def all_lengths(self) -> list[int]:
        return list(self.lengths) + [n for n in self.optional_lengths if n not in self.lengths]

    @property
    def steps_until_s(self) -> float:
        """No length or policy starts after this many seconds (the parity check's time is kept for it)."""
        return self.time_limit_s - (self.parity_reserve_s if self.parity else 0.0)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Run:
    """What the run has so far; every file is written from it."""

    settings: Settings
    started: float
    environment: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# --- the machine -----------------------------------------------------------------------------------


def missing_wheels() -> list[str]:
    """What this machine lacks to run the check at all (empty when it can)."""
    problems = []
    for module in ("numpy", "torch", "transformers", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError as error:
            problems.append(f"{module} cannot be imported ({error})")
    if not problems:
        import transformers

        version = tuple(int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit())
        if version < MIN_TRANSFORMERS:
            problems.append(f"transformers {transformers.__version__} is older than "
                            f"{'.'.join(map(str, MIN_TRANSFORMERS))} (the engine uses its 5.x cache API)")
    return problems


def device_problem(settings: Settings) -> str | None:
    import torch

    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (f"No CUDA device is visible (torch {torch.__version__}, {build}). Run it on a GPU machine, with a "
                "CUDA build of torch, or run `python -m benchmarks.gpu_check --tiny` on the CPU.")
    return None


def imported_forbidden() -> list[str]:
    return [name for name in FORBIDDEN_MODULES if name in sys.modules]


# --- writing ---------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def append_csv(path: Path, fields: tuple[str, ...], row: dict[str, Any]) -> None:
    """One row, written and flushed now, with the header first when the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({name: _cell(row.get(name)) for name in fields})


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_summary(run: Run) -> None:
    """gpu_check.json and gpu_check.md from what the run has so far."""
    out = run.settings.out
    data = {
        "mode": "gpu_check --tiny" if run.settings.tiny else "gpu_check",
        "settings": {k: _json_value(v) for k, v in vars(run.settings).items()},
        "environment": run.environment,
        "duration_s": round(run.elapsed(), 1),
        "checks": [vars(check) for check in run.checks],
        "rows": [{k: _json_value(v) for k, v in row.items()} for row in run.rows],
        "parity": [{k: _json_value(v) for k, v in row.items()} for row in run.parity],
    }
    (out / "gpu_check.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(run) + "\n")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(run: Run) -> str:
    settings, env = run.settings, run.environment
    model = env.get("model", {})
    table = [[_fmt(r.get("length"), 0), str(r.get("policy", "")), _fmt(r.get("prefill_s"), 2),
              _fmt(r.get("score_ms")), _fmt(r.get("select_ms"), 2), _fmt(r.get("kvcrush_extra_pct"), 3),
              _fmt(r.get("decode_ms_per_token")), _fmt(r.get("kv_ratio"), 3), _fmt(r.get("peak_gib"), 2),
              _fmt(r.get("peak_above_start_gib"), 2), _fmt(r.get("estimate_gib"), 2), _fmt(r.get("select_syncs")),
              _fmt(r.get("syncs_per_token")), str(r.get("status", "")),
              str(r.get("error") or r.get("problems") or "")[:160]] for r in run.rows]
    parity = [[str(p["policy"]), _fmt(p.get("scores_max_rel_diff"), 8), _fmt(p.get("kept_equal")),
               _fmt(p.get("tokens_equal")), str(p["status"]), str(p.get("error") or "")[:160]] for p in run.parity]
    checks = [f"- {'PASS' if c.passed else 'FAIL'} {c.name}" + (f": {c.detail}" if c.detail else "")
              for c in run.checks]
    where = env.get("gpu") or env.get("cpu", "")
    return "\n".join([
        f"# GPU acceptance check{' (--tiny, CPU)' if settings.tiny else ''}", "",
        f"Model {model.get('name', '')} ({model.get('layers', '')} layers, {model.get('query_heads', '')} query / "
        f"{model.get('kv_heads', '')} KV heads, head dim {model.get('head_dim', '')}, {model.get('dtype', '')}) on "
        f"{where}; torch {env.get('versions', {}).get('torch', '')}, transformers "
        f"{env.get('versions', {}).get('transformers', '')}; budget {settings.budget:.0%}, "
        f"{settings.new_tokens}-token answers; {run.elapsed():.0f} s.", "",
        "select ms: median of cached selects (scores already computed); score ms: the first select's scoring "
        "(0 when an earlier policy shared the scorer). KVCrush extra: its select minus its base's, as % of the "
        "prefill. peak: torch.cuda.max_memory_allocated during select + answer (absolute, and above what was "
        "allocated when the step began) against kvcrush.limits.estimate_run_memory. syncs: host syncs in one "
        "cached select, and per answered token (the whole answer: gather, question, decode); on CUDA those "
        "torch.cuda.set_sync_debug_mode flags (not the explicit synchronize of the engine's timings), on the CPU "
        "those kvcrush.syncs counts, where it exists.", "",
        "## Checks", "", *checks, "",
        "## Per length and policy", "",
        markdown_table(["tokens", "policy", "prefill s", "score ms", "select ms", "KVCrush extra % prefill",
                        "decode ms/token", "KV ratio", "peak GiB", "peak above start GiB", "estimate GiB",
                        "select syncs", "syncs/token", "status", "problems"], table), "",
        f"## CPU versus {settings.device} ({PARITY_LAYERS}-layer model, float32, {settings.parity_tokens} tokens)", "",
        markdown_table(["policy", "scores max rel. diff", "kept equal", "tokens equal", "status", "error"], parity)
        if parity else "(not run)",
    ])


# --- the run ---------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    tiny = bool(args.tiny)
    lengths = list(args.lengths or (TINY_LENGTHS if tiny else LENGTHS))
    optional = [LONG_LENGTH] if args.long and not tiny else []
    limit = args.time_limit if args.time_limit is not None else (TINY_TIME_LIMIT_S if tiny else TIME_LIMIT_S)
    return Settings(
        tiny=tiny, device="cpu" if tiny else args.device, dtype="float32" if tiny else args.dtype, lengths=lengths,
        optional_lengths=optional, shape=dict(TINY_SHAPE) if tiny else {}, budget=args.budget,
        new_tokens=args.new_tokens, repeats=args.repeats, seed=args.seed, time_limit_s=float(limit),
        # An explicit --time-limit moves the acceptance bound with it (e.g. a test on a busy machine).
        acceptance_s=max(TINY_ACCEPTANCE_S if tiny else ACCEPTANCE_S,
                         float(limit) + (TINY_ACCEPTANCE_S - TINY_TIME_LIMIT_S)), parity=not args.no_parity,
        parity_tokens=args.parity_tokens or (TINY_PARITY_TOKENS if tiny else PARITY_TOKENS),
        parity_reserve_s=TINY_PARITY_RESERVE_S if tiny else PARITY_RESERVE_S,
        hidden_limit=0 if tiny else None, policies=args.policies,
        out=Path(args.out) if args.out is not None else (OUT / "tiny" if tiny else OUT))


def _log(run: Run, message: str) -> None:
    print(f"[{run.elapsed():6.1f} s] {message}", flush=True)


def _record(run: Run, row: dict[str, Any]) -> None:
    row["elapsed_s"] = round(run.elapsed(), 1)
    run.rows.append(row)
    append_csv(run.settings.out / "gpu_check.csv", ROW_FIELDS, row)


def measure_length(run: Run, lm, policies: dict, n_tokens: int) -> None:
    """One prompt of `n_tokens`: its prefill row, then one row per policy (an error is recorded, and the next
    policy runs)."""
    from benchmarks import gpu_measure as gm
    from kvcrush import prepare_encoded
    from kvcrush.limits import estimate_run_memory

    settings = run.settings
    vocab = gm.prompt_vocab(lm)
    encoded = gm.random_prompt(n_tokens, vocab, settings.seed + n_tokens)
    reference = gm.reference_ids(vocab, settings.seed + n_tokens)
    base = {"length": n_tokens}
    try:
        with gm.measuring_memory(lm.device) as memory, gm.counting_syncs(lm.device) as syncs:
            prepared = prepare_encoded(lm, encoded, hidden_limit=settings.hidden_limit)
        estimate = estimate_run_memory(lm, len(encoded.all_ids), 0, hidden_rows=prepared.hidden_rows)
        finite = bool(prepared.last_logits.isfinite().all())
        problems = [] if finite else ["non-finite prefill logits"]
        if memory.above_start is not None and memory.above_start > estimate.total:
            problems.append(f"peak {gm.gib(memory.above_start)} GiB above start exceeds the estimate "
                            f"{gm.gib(estimate.total)}")
        base.update(prefill_s=prepared.prefill_s, hidden_rows=prepared.hidden_rows)
        _record(run, {**base, "policy": "(prefill)", "status": "failed" if problems else "ok",
                      "peak_gib": gm.gib(memory.peak), "peak_above_start_gib": gm.gib(memory.above_start),
                      "estimate_gib": gm.gib(estimate.total), "prefill_syncs": syncs.value,
                      "problems": "; ".join(problems)})
    except Exception as error:  # e.g. out of memory: recorded, and the next length runs
        _record(run, {**base, "policy": "(prefill)", "status": "error", "error": f"{type(error).__name__}: {error}"})
        gm.release(lm.device)
        _log(run, f"{n_tokens} tokens: prefill failed: {type(error).__name__}: {error}")
        return
    _log(run, f"{n_tokens} tokens: prefill {prepared.prefill_s:.2f} s, {prepared.hidden_rows} hidden rows kept")
    for label, policy in policies.items():
        if run.elapsed() > settings.steps_until_s:
            _record(run, {**base, "policy": label, "status": "skipped", "error": "time limit"})
            continue
        try:
            row = gm.measure_policy(prepared, label, policy, settings.new_tokens, settings.repeats, reference)
        except Exception as error:
            row = {"policy": label, "status": "error", "error": f"{type(error).__name__}: {error}"}
            gm.release(lm.device)
        _record(run, {**base, **row})
        _log(run, f"{n_tokens} tokens: {label}: {row['status']}"
                  + (f", select {row['select_ms']:.2f} ms" if row.get("select_ms") is not None else "")
                  + (f", {row.get('error') or row.get('problems')}" if row["status"] != "ok" else ""))
    del prepared
    gm.release(lm.device)


def warm_up(lm, policies: dict, settings: Settings) -> None:
    """One short prompt through the first policies (discarded), so the first measured one is not paying for
    kernel loading."""
    from benchmarks import gpu_measure as gm
    from kvcrush import prepare_encoded

    vocab = gm.prompt_vocab(lm)
    prepared = prepare_encoded(lm, gm.random_prompt(WARM_UP_TOKENS, vocab, settings.seed))
    for label in ("snapkv", "h2o", "kvcrush:snapkv:alternating"):
        if label in policies:
            prepared.generate(policies[label], 2)
    del prepared
    gm.release(lm.device)


def run_parity(run: Run, policies: dict) -> None:
    import torch

    from benchmarks import gpu_measure as gm
    from kvcrush import load_model

    settings = run.settings
    _log(run, f"parity: {PARITY_LAYERS}-layer model on cpu and {settings.device}, float32, "
              f"{settings.parity_tokens} tokens")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 on the device side: both sides compute in float32
    try:
        lm = load_model(MODEL, device=settings.device, dtype=torch.float32, seed=settings.seed,
                        **{**settings.shape, "num_hidden_layers": PARITY_LAYERS})
        encoded = gm.random_prompt(settings.parity_tokens, gm.prompt_vocab(lm), settings.seed)
        run.parity = gm.parity_rows(lm, encoded, policies, settings.new_tokens)
        del lm
    except Exception as error:
        run.parity = [{"policy": "(load)", "status": "error", "error": f"{type(error).__name__}: {error}"}]
    finally:
        torch.set_float32_matmul_precision(previous)
        gm.release(torch.device(settings.device))
    for row in run.parity:
        append_csv(settings.out / "parity.csv", PARITY_FIELDS, row)
    failed = [row["policy"] for row in run.parity if row["status"] != "ok"]
    _log(run, f"parity: {len(run.parity) - len(failed)} of {len(run.parity)} ok"
              + (f"; failed: {', '.join(failed)}" if failed else ""))


def final_checks(run: Run) -> list[Check]:
    settings = run.settings
    rows = run.rows
    required = set(settings.lengths)
    checks = [Check("imports", not imported_forbidden(),
                    f"imported {', '.join(imported_forbidden())}" if imported_forbidden()
                    else f"none of {', '.join(FORBIDDEN_MODULES)}")]
    for n_tokens in settings.all_lengths:
        mine = [r for r in rows if r.get("length") == n_tokens]
        bad = [f"{r['policy']} ({r['status']}: {r.get('error') or r.get('problems')})" for r in mine
               if r["status"] in ("failed", "error") or (r["status"] == "skipped" and n_tokens in required)]
        ran = sum(r["status"] in ("ok", "failed") and r["policy"] != "(prefill)" for r in mine)
        if n_tokens in required or ran:
            checks.append(Check(f"{n_tokens} tokens", bool(mine) and not bad,
                                "; ".join(bad)[:2000] if bad else f"{ran} policies: shapes, bytes, finite, memory"))
    if settings.parity:
        failed = [r["policy"] for r in run.parity if r["status"] != "ok"]
        checks.append(Check("CPU versus device parity", bool(run.parity) and not failed,
                            f"failed: {', '.join(failed)}" if failed else f"{len(run.parity)} policies"))
    checks.append(Check("time", run.elapsed() <= settings.acceptance_s,
                        f"{run.elapsed():.0f} s of at most {settings.acceptance_s:.0f} s"))
    return checks


def measure_lengths(run: Run, lm, policies: dict) -> None:
    """Every length in turn, after a warm-up; the summary files are rewritten after each."""
    settings = run.settings
    try:
        warm_up(lm, policies, settings)
    except Exception as error:  # the measured rows will show what fails
        _log(run, f"warm-up failed: {type(error).__name__}: {error}")
    last: tuple[int, float] | None = None  # (tokens, seconds) of the last length measured
    for n_tokens in settings.all_lengths:
        # An optional length starts only if, scaled linearly from the last one (selects and answers are linear in
        # the prompt; prefill and H2O grow faster), it would end within the limit: one step may overrun it.
        predicted = last[1] * n_tokens / last[0] if last and n_tokens not in settings.lengths else 0.0
        if run.elapsed() + predicted > settings.steps_until_s:
            _record(run, {"length": n_tokens, "policy": "(prefill)", "status": "skipped",
                          "error": f"time limit ({predicted:.0f} s predicted)" if predicted else "time limit"})
            continue
        started = run.elapsed()
        measure_length(run, lm, policies, n_tokens)
        last = (n_tokens, run.elapsed() - started)
        write_summary(run)


def _command(argv: list[str] | None) -> str:
    return " ".join(["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(
        "gpu_check", __doc__, full_doc=True, lengths=None, policies=None, budget=0.25, repeats=3, device="cuda",
        dtype="bfloat16", seed=0, out=None,
        helps={"lengths": f"prompt tokens (default {' '.join(map(str, LENGTHS))}; --tiny: "
                          f"{' '.join(map(str, TINY_LENGTHS))})",
               "policies": "labels of benchmarks.gpu_measure.policy_specs (default all)",
               "repeats": "cached selects per policy, median (default 3)", "device": "default cuda (--tiny: cpu)",
               "dtype": "default bfloat16 (--tiny: float32)",
               "out": f"output folder (default {OUT}; --tiny: {OUT / 'tiny'})"},
    )
    parser.add_argument("--tiny", action="store_true", help="the same code on the CPU with a tiny model (< 2 min)")
    parser.add_argument("--long", action="store_true", help=f"also {LONG_LENGTH} tokens (128k positions) when "
                        "the time limit leaves room")
    parser.add_argument("--time-limit", type=float, help=f"seconds after which no new step starts (default "
                        f"{TIME_LIMIT_S:.0f}; --tiny {TINY_TIME_LIMIT_S:.0f}), less {PARITY_RESERVE_S:.0f} s "
                        f"(--tiny {TINY_PARITY_RESERVE_S:.0f}) kept for the parity check at the end; what is left "
                        "is recorded as skipped")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy answer tokens (default 16)")
    parser.add_argument("--no-parity", action="store_true", help="skip the CPU-versus-device parity check")
    parser.add_argument("--parity-tokens", type=int, help=f"parity prompt tokens (default {PARITY_TOKENS}; --tiny "
                        f"{TINY_PARITY_TOKENS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    run = Run(settings, time.perf_counter())
    missing = missing_wheels()
    if missing:
        print("This machine cannot run the GPU check: " + "; ".join(missing) + f".\nBring wheels for: {WHEELS}.")
        return 2
    problem = device_problem(settings)
    if problem:
        print(problem)
        return 2

    import torch

    from benchmarks import gpu_measure as gm
    from benchmarks.env import environment, keep_freed_memory
    from kvcrush import load_model

    keep_freed_memory()
    settings.out.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_check.csv", "parity.csv"):  # rows are appended as they come: start each run afresh
        (settings.out / name).unlink(missing_ok=True)
    policies = gm.build_policies(settings.policies, settings.budget, settings.seed)
    _log(run, f"loading {MODEL} on {settings.device} ({settings.dtype})" + (" scaled down (--tiny)" if settings.tiny
                                                                           else ""))
    try:
        lm = load_model(MODEL, device=settings.device, dtype=settings.dtype, seed=settings.seed, **settings.shape)
    except Exception as error:  # e.g. out of memory: no length can run, the parity check still does
        lm = None
        _record(run, {"policy": "(load)", "status": "error", "error": f"{type(error).__name__}: {error}"})
        _log(run, f"loading failed: {type(error).__name__}: {error}")
        run.environment = environment(None, {"command": _command(argv)})
    if lm is not None:
        run.environment = environment(lm, {"command": _command(argv)})
        _log(run, f"loaded in {lm.load_s:.1f} s: {lm.n_layers} layers, {lm.query_heads} query / {lm.kv_heads} KV "
                  f"heads; {len(policies)} policies, lengths {settings.all_lengths}")
        measure_lengths(run, lm, policies)
        del lm
    gm.release(torch.device(settings.device))
    if settings.parity:
        run_parity(run, policies)
    run.checks = final_checks(run)
    write_summary(run)
    text = markdown(run)
    print()
    print(text)
    failed = [check.name for check in run.checks if not check.passed]
    print(f"\nWrote {settings.out} in {run.elapsed():.0f} s: " + (f"FAILED {', '.join(failed)}" if failed
                                                                 else "every check passed") + ".")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
