"""One command for the whole benchmark: quality, overhead and memory against the full cache, our
baselines and NVIDIA kvpress, on the packaged model and data, in one process (or on Ray workers, --ray).

    python -m benchmarks.run --quick --publish      # < 10 min on 2 CPU cores; results/latest/
    python -m benchmarks.run --full                  # the whole grid (hours on CPU)
    python -m benchmarks.run --random-weights --shape llama-3-8b --layers 2 --lengths 2048 4096   # CPU
    python -m benchmarks.run --random-weights --shape llama-3-8b --device cuda                     # GPU
    python -m benchmarks.run --full --ray auto --out DIR   # the grid's items on a Ray cluster, resumable

The quality grid writes each finished item to OUT/items/ at once: a rerun with the same --out resumes,
in this process or on Ray (`benchmarks.distributed`), and both give the same samples.csv.
See benchmarks/README.md for every option, output file and column.
"""

from __future__ import annotations

import os

# Threads that sleep instead of spinning between parallel regions: on a machine shared with other
# processes, spinning OpenMP threads made a 1k-token prefill 6x slower (measured: 23 s instead of 4 s with
# 2 threads on 2 busy cores). Must be set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import aggregate, comparisons, pareto, report  # noqa: E402
from benchmarks.chart import chart_html  # noqa: E402
from benchmarks.cli import script_parser, start, write_csv, write_json  # noqa: E402
from benchmarks.env import (  # noqa: E402
    environment,
    load_seeded,
    peak_rss_bytes,
    reset_peak_rss,
)
from benchmarks.grid import (  # noqa: E402
    ENGINE_KVPRESS,
    FULL_BUDGETS,
    KVPRESS_POLICY,
    QUICK_POLICIES,
    STANDARD_POLICIES,
    parse_budgets,
    parse_policies,
)
from benchmarks.tables import render_markdown, scale_markdown  # noqa: E402
from benchmarks.tasks.agreement import AgreementSettings  # noqa: E402
from benchmarks.tasks.likelihood import LikelihoodSettings  # noqa: E402
from benchmarks.tasks.retrieval import RetrievalSettings  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest"
RETRIEVAL_TASKS = ("needle", "multikey", "multivalue")
ALL_TASKS = (*RETRIEVAL_TASKS, "likelihood", "agreement")
MIB = 2**20


@dataclass
class RunSettings:
    """Everything a quality run does; `quick()`, `standard()` and `full()` are the presets.

    `retrieval` sets the three needle tasks together (lengths, depths, prompts per length).
    """

    mode: str = "full"
    tasks: tuple[str, ...] = ALL_TASKS
    budgets: tuple[float, ...] = FULL_BUDGETS
    policies: tuple[str, ...] = ("all",)
    seed: int = 0
    window: int = 32
    crush_fraction: float = 0.25
    query_aware: bool = False
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings)
    agreement: AgreementSettings = field(default_factory=lambda: AgreementSettings(samples=50))
    overhead: bool = True
    overhead_lengths: tuple[int, ...] = (1024, 2048, 4096)
    overhead_repeats: int = 5
    overhead_budget: float = 0.25
    overhead_policies: tuple[str, ...] = ("snapkv", "kvcrush:snapkv:alternating", "kvcrush:h2o:alternating",
                                          "kvpress:snapkv")
    parity: bool = True
    dropped: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls) -> RunSettings:
        return cls(
            mode="quick", budgets=(0.25, 0.5), policies=QUICK_POLICIES,
            retrieval=RetrievalSettings(lengths=(1024,), depths=(0.1, 0.5, 0.9), samples=3),
            likelihood=LikelihoodSettings(context_tokens=1024, samples=2),
            agreement=AgreementSettings(datasets=("squad",), samples=2),
            overhead_lengths=(1024, 2048), overhead_repeats=1,
            overhead_policies=("snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv"),
            dropped=[
                "Quick mode is a smoke run, too small for any claim: 3 prompts per needle task (1k tokens,"
                " depths 10/50/90%), 2 likelihood samples at 1k, 2 SQuAD questions, budgets 25/50% and"
                f" {len(QUICK_POLICIES)} policies; overhead at 1k/2k with one repeat. Use --standard for the"
                " statistics, --full for everything.",
            ],
        )

    @classmethod
    def standard(cls) -> RunSettings:
        """The run the committed results come from: under an hour on 2 CPU cores (see benchmarks/README.md)."""
        return cls(
            mode="standard", tasks=STANDARD_TASKS, budgets=STANDARD_BUDGETS, policies=STANDARD_POLICIES,
            retrieval=RetrievalSettings(lengths=(1024,), samples=30),
            likelihood=LikelihoodSettings(context_tokens=2048, continuation_tokens=64, samples=20),
            agreement=AgreementSettings(datasets=("squad", "hotpotqa"), samples=STANDARD_AGREEMENT_SAMPLES,
                                        max_new_tokens=8),
            overhead_lengths=(1024, 2048, 4096), overhead_repeats=5,
            dropped=[
                "Standard mode, sized for an hour on 2 CPU cores: single-needle and multi-key retrieval at 1k"
                " tokens (30 prompts per task, 6 per depth; multi-value, 2k and 4k needles are in --full),"
                f" likelihood at 2k (20 samples), SQuAD and HotpotQA ({STANDARD_AGREEMENT_SAMPLES} questions"
                f" each, answers up to 8 tokens), and {len(STANDARD_POLICIES)} systems (listed below; --full runs"
                " every policy in both head reductions, every anchor and crush fraction, and the storage group:"
                " 8/4-bit rows at token and byte budgets, cheaper KVCrush representatives, and the four"
                " KVCrush variants beyond the paper, group `variants`). This run's seed is the test seed.",
            ],
        )


STANDARD_TASKS = ("needle", "multikey", "likelihood", "agreement")
STANDARD_BUDGETS = (0.10, 0.25, 0.50, 0.75)
STANDARD_AGREEMENT_SAMPLES = 10


def _override(settings: RunSettings, args: argparse.Namespace) -> RunSettings:
    s = settings
    if args.tasks:
        s.tasks = tuple(t for item in args.tasks for t in item.replace(",", " ").split())
    if args.budgets:
        s.budgets = tuple(parse_budgets(args.budgets))
    if args.policies:
        s.policies = tuple(args.policies)
    s.seed = args.seed
    s.window = args.window
    s.crush_fraction = args.crush_fraction
    s.query_aware = args.query_aware
    needle, likelihood, agreement = s.retrieval, s.likelihood, s.agreement
    if args.samples is not None:
        needle = dataclasses.replace(needle, samples=args.samples)
        likelihood = dataclasses.replace(likelihood, samples=args.samples)
        agreement = dataclasses.replace(agreement, samples=args.samples)
    if args.needle_samples:
        needle = dataclasses.replace(needle, samples=args.needle_samples)
    if args.likelihood_samples:
        likelihood = dataclasses.replace(likelihood, samples=args.likelihood_samples)
    if args.agreement_samples:
        agreement = dataclasses.replace(agreement, samples=args.agreement_samples)
    if args.needle_lengths:
        needle = dataclasses.replace(needle, lengths=tuple(args.needle_lengths))
    if args.needle_depths:
        needle = dataclasses.replace(needle, depths=tuple(args.needle_depths))
    if args.likelihood_context:
        likelihood = dataclasses.replace(likelihood, context_tokens=args.likelihood_context)
    if args.datasets:
        agreement = dataclasses.replace(agreement, datasets=tuple(args.datasets))
    if args.new_tokens:
        agreement = dataclasses.replace(agreement, max_new_tokens=args.new_tokens)
    s.retrieval = dataclasses.replace(needle, seed=s.seed)
    s.likelihood = dataclasses.replace(likelihood, seed=s.seed)
    s.agreement = dataclasses.replace(agreement, seed=s.seed)
    if args.no_overhead:
        s.overhead = False
    if args.overhead_lengths:
        s.overhead_lengths = tuple(args.overhead_lengths)
    if args.overhead_repeats:
        s.overhead_repeats = args.overhead_repeats
    if args.no_parity:
        s.parity = False
    return s


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(
        "run", __doc__, full_doc=True, policies=None, seed=0, model=None, device="auto", dtype=None, threads=None,
        layers=None, lengths=None, out=None,
        helps={"policies": "specs or groups: snapkv, snapkv@all, kvcrush:snapkv:alternating, kvpress:snapkv, "
                           "snapkv~4 (4-bit rows), snapkv~4b (4-bit rows, same bytes), "
                           "kvcrush:snapkv:alternating:rep4~8b, baselines, matched, kvcrush, head-reduction, "
                           "kvpress, storage, all (see benchmarks/grid.py)",
               "model": "default: the packaged SmolLM2-135M-Instruct; random:tiny for a smoke test; any HF id or "
                        "folder",
               "threads": "torch CPU threads (default: torch's choice, the core count)",
               "layers": "random-weights layer count (default: 2 on CPU, full on GPU)",
               "lengths": "random-weights context lengths",
               "out": "output folder (default benchmarks/results/<mode>-<time>)"},
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smoke run, < 10 min on 2 CPU cores (default)")
    mode.add_argument("--standard", action="store_true",
                      help="the statistics the committed results come from, < 60 min on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help="the whole grid (for a GPU)")
    mode.add_argument("--random-weights", action="store_true",
                      help="timing and memory at a real shape with random weights (--shape, --layers, --lengths)")
    parser.add_argument("--tasks", nargs="+", help=f"subset of {', '.join(ALL_TASKS)}")
    parser.add_argument("--budgets", nargs="+", help="fractions or percentages, e.g. 0.25 50%%")
    parser.add_argument("--samples", type=int, help="prompts per needle task and length / likelihood samples / "
                        "questions per agreement dataset")
    parser.add_argument("--window", type=int, default=32, help="SnapKV observation window, both engines")
    parser.add_argument("--crush-fraction", type=float, default=0.25)
    parser.add_argument("--query-aware", action="store_true",
                        help="our engine only: the question is the observation window (kvpress stays query-agnostic)")
    parser.add_argument("--needle-samples", type=int,
                        help="prompts per needle task and length (spread over the depths); overrides --samples")
    parser.add_argument("--likelihood-samples", type=int, help="likelihood samples; overrides --samples")
    parser.add_argument("--agreement-samples", type=int, help="questions per agreement dataset; overrides --samples")
    parser.add_argument("--needle-lengths", type=int, nargs="+")
    parser.add_argument("--needle-depths", type=float, nargs="+")
    parser.add_argument("--likelihood-context", type=int)
    parser.add_argument("--datasets", nargs="+", help="agreement datasets: squad hotpotqa")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens per agreement answer (default 16)")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--overhead-lengths", type=int, nargs="+")
    parser.add_argument("--overhead-repeats", type=int)
    parser.add_argument("--no-parity", action="store_true", help="skip the kept-token overlap with kvpress")
    parser.add_argument("--shape", default="llama-3-8b", help="random-weights shape (kvcrush.models.shapes)")
    parser.add_argument("--publish", action="store_true", help="also copy the results to benchmarks/results/latest/")
    parser.add_argument("--cdn-plotly", action="store_true",
                        help="chart.html loads plotly.js from its CDN (default: embedded, works offline)")
    parser.add_argument("--no-progress", action="store_true")
    ray = parser.add_argument_group("on a Ray cluster (optional: pip install ray; see benchmarks/README.md)")
    ray.add_argument("--ray", metavar="ADDRESS|local",
                     help="run the grid's items on Ray workers: 'local' starts a cluster on this machine, else "
                          "auto, HOST:PORT or ray://HOST:PORT; a rerun with the same --out resumes")
    ray.add_argument("--workers", type=int, help="Ray workers, each loading the model once (default: one per GPU; "
                                                 "on CPUs the cluster's CPUs / --worker-cpus)")
    ray.add_argument("--worker-cpus", type=int, help="CPUs (and torch threads) per CPU worker (default: the "
                                                     "cluster's CPUs / --workers, else 1)")
    return parser


def _out_dir(args: argparse.Namespace, mode: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{mode}-{stamp}"


def _publish(out: Path, files: list[str]) -> None:
    LATEST.mkdir(parents=True, exist_ok=True)
    for name in files:
        source = out / name
        if source.is_file():
            shutil.copy2(source, LATEST / name)
    print(f"Published to {LATEST}")


GRID_OPTIONS = ("tasks", "budgets", "policies", "samples", "needle_samples", "likelihood_samples", "agreement_samples",
                "needle_lengths", "needle_depths", "likelihood_context", "datasets", "new_tokens", "overhead_lengths",
                "overhead_repeats", "no_overhead", "no_parity", "query_aware")
QUALITY_FILES = ["results.csv", "breakdown.csv", "samples.csv", "parity.csv", "overhead.csv", "summary.json",
                 "report.md", "chart.html", "environment.json"]
SCALE_FILES = ["scale.csv", "scale.json", "scale.md"]


class InProcess:
    """The serial backend: the model in this process, items one after the other (`quality.run_grid`).
    `benchmarks.distributed.RayGrid` has the same methods and runs the same items on Ray workers."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.lm, self.load_s = load_seeded(args.model, args.device, args.dtype, seed)

    def info(self) -> tuple[dict[str, Any], float]:
        return environment(self.lm), self.load_s

    def build_items(self, tasks: tuple[str, ...], task_settings: dict[str, Any]) -> list:
        from benchmarks.quality import build_items

        return build_items(self.lm.tokenizer, tasks, task_settings)

    def run_grid(self, items: list, specs: list, budgets: list[float], seed: int, query_aware: bool, parity: bool,
                 store, show_progress: bool = True):
        from benchmarks.quality import run_grid, warm_up

        if store.pending(items):
            warm_up(self.lm, items, specs, budgets[0], seed)
        return run_grid(self.lm, items, specs, budgets, seed, query_aware, show_progress=show_progress,
                        parity=parity, store=store)

    def overhead(self, lengths: list[int], specs: list, budget: float, repeats: int, seed: int,
                 show_progress: bool = True) -> list[dict[str, Any]]:
        from benchmarks.overhead import measure_overhead

        return measure_overhead(self.lm, lengths, specs, budget, repeats, seed, show_progress=show_progress)

    def reset_peak(self) -> None:
        reset_peak_rss()

    def peak_mib(self) -> float:
        return peak_rss_bytes() / MIB

    def close(self) -> None:
        pass


def _backend(args: argparse.Namespace, seed: int):
    """This process (`InProcess`), or Ray workers with ``--ray`` (`benchmarks.distributed.RayGrid`)."""
    if not args.ray:
        return InProcess(args, seed)
    from benchmarks.distributed import RayGrid

    return RayGrid(args.ray, args.model, args.device, args.dtype, seed, workers=args.workers,
                   worker_cpus=args.worker_cpus, threads=args.threads)


def run_quality(args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    if args.full:
        settings = RunSettings(mode="full")
    elif args.standard:
        settings = RunSettings.standard()
    else:
        settings = RunSettings.quick()
    settings = _override(settings, args)
    changed = [f"--{name.replace('_', '-')}" for name in GRID_OPTIONS if getattr(args, name, None)]
    if changed:
        settings.dropped.append(f"Grid changed from the {settings.mode} preset by {', '.join(changed)} "
                                "(see the command).")
    specs = parse_policies(settings.policies, settings.window, settings.crush_fraction)
    _require_kvpress_for(specs)
    out = _out_dir(args, settings.mode)
    out.mkdir(parents=True, exist_ok=True)
    print(f"KVCrush benchmark, {settings.mode} mode -> {out}")
    for note in settings.dropped:
        print(note)
    print(f"Seed {settings.seed}: needle prompt i uses seed {settings.seed}*10000+i; likelihood offsets from "
          f"Random('likelihood-{settings.seed}'); SQuAD/HotpotQA drawn with seed {settings.seed}; policy seed "
          f"{settings.seed}.")
    print(f"Budgets {', '.join(f'{b:.0%}' for b in settings.budgets)}; policies: "
          f"{', '.join(s.label for s in specs)}; tasks: {', '.join(settings.tasks)}; "
          f"{'query-aware (ours only)' if settings.query_aware else 'query-agnostic'}.")

    backend = _backend(args, settings.seed)
    try:
        measured = _measure(backend, args, settings, specs, out)
    finally:
        backend.close()
    grid, overhead_rows, env, durations = measured.grid, measured.overhead, measured.env, measured.durations

    results = aggregate.results_table(grid.records, settings.seed)
    breakdown = aggregate.breakdown_table(grid.records, settings.seed)
    durations["total"] = time.perf_counter() - started
    summary = {
        "mode": settings.mode,
        "settings": _settings_dict(settings, specs),
        "dropped": settings.dropped,
        "environment": env,
        "durations_s": durations,
        "peak_rss_mib": measured.peaks,
        "items": measured.items,
        "comparisons": comparisons.comparisons(grid.records),
        "best": comparisons.best_systems(grid.records, results),
        "paper_target": aggregate.paper_target(results),
        "parity_selection": grid.parity,
        "overhead": overhead_rows,
        "memory": aggregate.memory_summary(grid.records),
        "pareto": pareto.front_rows(results),
        "errors": grid.errors,
        "results": results.to_dict(orient="records"),
    }
    write_csv(out / "results.csv", results, aggregate.RESULT_COLUMNS)
    write_csv(out / "breakdown.csv", breakdown, aggregate.BREAKDOWN_COLUMNS)
    write_csv(out / "samples.csv", grid.records, precise=True)
    write_csv(out / "parity.csv", grid.parity)
    write_csv(out / "overhead.csv", overhead_rows)
    write_json(out / "summary.json", summary)
    write_json(out / "environment.json", env)
    markdown = render_markdown(summary, results)
    (out / "report.md").write_text(markdown + "\n")
    chart_html(results, out / "chart.html", f"KVCrush benchmark ({settings.mode}, {env['model']['name']})",
                      embed_js=not args.cdn_plotly)
    print()
    print(markdown)
    print(f"\nWrote {out} in {durations['total']:.0f} s.")
    if args.publish:
        _publish(out, QUALITY_FILES)
        if settings.mode == "standard":
            report.update_readme(summary)
            print("README.md benchmark headline updated from this run's summary.json.")
    return out


def _require_kvpress_for(specs: list) -> None:
    """Exit before anything loads when kvpress systems are asked for and kvpress cannot run here (missing, or it
    refuses the installed transformers): the message says what to install, or which systems to leave out."""
    from kvcrush.integrations import kvpress_problem

    wanted = [spec.label for spec in specs if spec.engine == ENGINE_KVPRESS or spec.method == KVPRESS_POLICY
              or spec.base == KVPRESS_POLICY or "press" in spec.options]
    problem = kvpress_problem() if wanted else None
    if problem:
        raise SystemExit(f"{problem}\nThis run asks for {', '.join(wanted)}; choose --policies without kvpress:*, "
                         "press:* and kvcrush:press:* systems to run the rest here.")


@dataclass
class Measured:
    """What the model-dependent phases of a quality run produce (`_measure`)."""

    grid: Any
    overhead: list[dict[str, Any]]
    env: dict[str, Any]
    durations: dict[str, float]
    peaks: dict[str, float]
    items: dict[str, int]  # total, resumed (read from OUT/items), ran (this time)


def _measure(backend, args: argparse.Namespace, settings: RunSettings, specs: list, out: Path) -> Measured:
    """Items, the quality grid (resumed from ``OUT/items/``) and the overhead, on either backend."""
    from benchmarks.quality import GridMismatch, ItemStore, grid_fingerprint

    env, load_s = backend.info()
    print(f"Model {env['model']['name']} on {env['model']['device']} ({env['model']['dtype']}), loaded in "
          f"{load_s:.1f} s; {env['cpu']}, {env['torch_threads']} threads; GPU: {env['gpu'] or 'none'}.")
    task_settings = {**{name: settings.retrieval for name in RETRIEVAL_TASKS}, "likelihood": settings.likelihood,
                     "agreement": settings.agreement}
    items = backend.build_items(settings.tasks, task_settings)
    print(f"{len(items)} prompts x (1 full + {len(specs)} policies x {len(settings.budgets)} budgets) = "
          f"{len(items) * (1 + len(specs) * len(settings.budgets))} runs.")
    try:
        store = ItemStore(out, grid_fingerprint(args.model, args.device, args.dtype, items, specs, settings.budgets,
                                                settings.seed, settings.query_aware, settings.parity))
    except GridMismatch as error:
        raise SystemExit(str(error)) from None
    resumed = len(store.finished(items))
    if resumed:
        print(f"Resuming: {resumed} of {len(items)} items are already in {store.folder}; running the other "
              f"{len(items) - resumed}.")
    durations: dict[str, float] = {"load": load_s}
    peaks: dict[str, float] = {"after load": backend.peak_mib()}

    phase = time.perf_counter()
    backend.reset_peak()
    grid = backend.run_grid(items, specs, list(settings.budgets), settings.seed, settings.query_aware,
                            settings.parity, store, show_progress=not args.no_progress)
    durations["grid"] = time.perf_counter() - phase
    peaks["quality grid"] = backend.peak_mib()

    overhead_rows: list[dict[str, Any]] = []
    if settings.overhead:
        phase = time.perf_counter()
        backend.reset_peak()
        overhead_specs = parse_policies(settings.overhead_policies, settings.window, settings.crush_fraction)
        print(f"Overhead at {', '.join(map(str, settings.overhead_lengths))} tokens, "
              f"{settings.overhead_repeats} repeat(s): {', '.join(s.label for s in overhead_specs)} vs full.")
        overhead_rows = backend.overhead(list(settings.overhead_lengths), overhead_specs, settings.overhead_budget,
                                         settings.overhead_repeats, settings.seed, show_progress=not args.no_progress)
        durations["overhead"] = time.perf_counter() - phase
        peaks["overhead"] = backend.peak_mib()
    items_done = {"total": len(items), "resumed": resumed, "ran": len(items) - resumed}
    return Measured(grid, overhead_rows, env, durations, peaks, items_done)


def _settings_dict(settings: RunSettings, specs) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["policy_specs"] = [{"label": s.label, "engine": s.engine, "method": s.method, "base": s.base,
                             "anchor": s.anchor, "options": s.options, "kv_bits": s.kv_bits,
                             "equal_bytes": s.equal_bytes} for s in specs]
    return data


def run_scale(args: argparse.Namespace) -> Path:
    from benchmarks.grid import parse_policies as parse
    from benchmarks.scale import CPU_LENGTHS, GPU_LENGTHS, SCALE_POLICIES, measure_scale
    from kvcrush.models.loading import resolve_device
    from kvcrush.models.shapes import SHAPES

    started = time.perf_counter()
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    layers = args.layers or (None if on_gpu else 2)
    lengths = args.lengths or list(GPU_LENGTHS if on_gpu else CPU_LENGTHS)
    budgets = parse_budgets(args.budgets) if args.budgets else [0.25]
    specs = parse(args.policies or SCALE_POLICIES, args.window, args.crush_fraction)
    out = _out_dir(args, f"scale-{args.shape}")
    out.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"seed": args.seed}
    if layers:
        overrides["num_hidden_layers"] = layers
    shape = SHAPES.get(args.shape, {})
    needed = max(lengths) + 64
    if shape and shape.get("max_position_embeddings", needed) < needed:
        overrides["max_position_embeddings"] = needed
    print(f"Scale run: random:{args.shape} ({layers or shape.get('num_hidden_layers')} layers) on {device}, "
          f"lengths {lengths}, budgets {budgets}, policies {[s.label for s in specs]} -> {out}")
    if not on_gpu:
        print("CPU: reduced shape (fewer layers); per-layer costs match the full shape, totals scale with layers.")
    lm, _ = load_seeded(f"random:{args.shape}", device, args.dtype, args.seed, **overrides)
    env = environment(lm)
    rows = measure_scale(lm, lengths, specs, budgets, args.seed, args.new_tokens or 32,
                         show_progress=not args.no_progress)
    summary = {"mode": "scale", "environment": env, "lengths": lengths, "budgets": budgets,
               "policies": [s.label for s in specs], "rows": rows,
               "duration_s": time.perf_counter() - started}
    write_csv(out / "scale.csv", rows)
    write_json(out / "scale.json", summary)
    write_json(out / "environment.json", env)
    text = scale_markdown(rows) if rows else "No scale results."
    text += (f"\n\nEnvironment: {env['gpu'] or env['cpu']}, torch {env['versions']['torch']}, "
             f"transformers {env['versions']['transformers']}; command `{env['command']}`; "
             f"{summary['duration_s']:.0f} s.\n")
    (out / "scale.md").write_text(text)
    print()
    print(text)
    if args.publish:
        _publish(out, SCALE_FILES)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = start(parser, argv)  # keeps freed memory (timings without page faults, benchmarks/env.py), --threads
    if args.ray:
        if args.random_weights:
            parser.error("--ray runs the quality grid; --random-weights measures one model in this process.")
        for name in ("workers", "worker_cpus"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1.")
        from benchmarks.distributed import require_ray

        require_ray()  # before anything loads: without Ray, say how to install it and exit
    elif args.workers or args.worker_cpus:
        parser.error("--workers and --worker-cpus need --ray ADDRESS|local.")
    if args.random_weights:
        return run_scale(args)
    return run_quality(args)


if __name__ == "__main__":
    main(sys.argv[1:])
