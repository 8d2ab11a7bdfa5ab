"""The benchmark grid on a Ray cluster: ``python -m benchmarks.run ... --ray ADDRESS|local --workers N``.

Each worker is a Ray actor (Moritz et al., 2018, "Ray: A Distributed Framework for Emerging AI
Applications") that loads the model once, on one GPU or on ``--worker-cpus`` CPUs, and then runs grid
items as actor tasks through `benchmarks.quality.run_item`, the function the serial run calls item after
item. This process (the driver) needs no model: one worker builds the items from its tokenizer (as the
serial run does), the driver hands them out one at a time to whichever worker is free and writes each
result into ``OUT/items/`` the moment it arrives (`benchmarks.quality.ItemStore`), so a rerun with the same
``--out`` resumes where the last one stopped, whether that one ran serially or on Ray. The merged records
are read back from those files in item order, as the serial run's are, so both give the same
``samples.csv``, sample for sample (timings aside): every item runs with the same seed, token ids and
policy objects, and no state passes from one item to the next. Floating-point sums can differ in their
last bits between thread counts, so compare runs at the same ``--threads`` (a CPU worker uses
``--worker-cpus`` threads).

The kvpress parity item is an item like the others: its worker compares the kept tokens of both engines
and returns the parity rows with the item. The overhead measurement (timings) runs on one worker after
the grid.

Ray is an optional dependency (`require_ray`): without it ``--ray`` says how to install it and exits.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.grid import PolicySpec
from benchmarks.quality import (
    GridResult,
    ItemResult,
    ItemStore,
    item_key,
    item_runs,
    parity_counterparts,
    progress_bar,
)
from benchmarks.tasks import Item

ROOT = Path(__file__).resolve().parent.parent  # the folder holding the `benchmarks` and `kvcrush` packages
LOCAL = "local"
INSTALL_HINT = (
    "--ray needs Ray, an optional dependency that is not installed in this environment. Install it with\n"
    "    pip install ray\n"
    "(requirements.txt lists it as optional), or run the same command without --ray to run the grid here."
)
# What a remote cluster's workers get of this checkout when the driver connects (Ray's working_dir):
# the code, not the environments, histories and results beside it.
UPLOAD_EXCLUDES = [".venv", ".git", "benchmarks/results", "**/__pycache__", "node_modules", "*.gguf",
                   "*.safetensors"]


def require_ray():
    """The `ray` module, or exit with how to install it (Ray is optional: only ``--ray`` needs it)."""
    try:
        import ray
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None
    return ray


class GridWorker:
    """One worker of the grid: the model loaded once, then items, warm-up and overhead as tasks.

    A plain class; `RayGrid` makes it a Ray actor (``ray.remote(GridWorker)``), so this module imports
    without Ray. It seeds and loads as the serial run does: both call `benchmarks.env.load_seeded`.
    """

    def __init__(self, model: str | None, device: str, dtype: str | None, seed: int, threads: int | None) -> None:
        import torch

        from benchmarks.env import keep_freed_memory, load_seeded

        keep_freed_memory()
        if threads:
            torch.set_num_threads(threads)
        self.lm, self.load_s = load_seeded(model, device, dtype, seed)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def info(self) -> dict[str, Any]:
        """This worker's environment (`benchmarks.env.environment`), load time and name."""
        from benchmarks.env import environment

        return {"environment": environment(self.lm), "load_s": self.load_s, "worker": self.name}

    def build_items(self, tasks: tuple[str, ...], task_settings: dict[str, Any]) -> list[Item]:
        from benchmarks.quality import build_items

        return build_items(self.lm.tokenizer, tasks, task_settings)

    def warm_up(self, items: list[Item], specs: list[PolicySpec], budget: float, seed: int) -> None:
        from benchmarks.quality import warm_up

        warm_up(self.lm, items, specs, budget, seed)

    def run_item(self, index: int, item: Item, specs: list[PolicySpec], budgets: list[float], seed: int,
                 query_aware: bool, counterparts: dict[str, list[str]] | None) -> ItemResult:
        from benchmarks.quality import run_item

        return run_item(self.lm, item, specs, budgets, seed, query_aware, counterparts, index,
                        log=lambda text: print(text, file=sys.stderr))

    def overhead(self, lengths: list[int], specs: list[PolicySpec], budget: float, repeats: int,
                 seed: int) -> list[dict[str, Any]]:
        from benchmarks.overhead import measure_overhead

        return measure_overhead(self.lm, lengths, specs, budget, repeats, seed, show_progress=False)

    def reset_peak(self) -> None:
        from benchmarks.env import reset_peak_rss

        reset_peak_rss()

    def peak_mib(self) -> float:
        from benchmarks.env import peak_rss_bytes

        return peak_rss_bytes() / 2**20


class RayGrid:
    """The grid's workers on a Ray cluster (``address``: ``local`` starts one on this machine, anything else
    is passed to ``ray.init(address=...)``: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``).

    GPU workers (``device`` cuda, or auto on a cluster with GPUs) take one GPU each, ``workers`` defaulting to
    the cluster's GPU count. CPU workers take ``worker_cpus`` CPUs each and use that many torch threads;
    ``workers`` alone splits the cluster's CPUs evenly, neither gives one worker per CPU. A Ray already
    initialised in this process (a test's ``ray.init(num_cpus=2)``) is used as it is and left running.
    Same methods as the serial backend in `benchmarks.run`, so `run_quality` runs either.
    """

    def __init__(self, address: str, model: str | None, device: str, dtype: str | None, seed: int,
                 workers: int | None = None, worker_cpus: int | None = None, threads: int | None = None,
                 log: Callable[[str], None] = print) -> None:
        ray = require_ray()
        self.log = log
        self.started_ray = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": "WARNING", "include_dashboard": False}
            if address == LOCAL:
                ray.init(**options)
            else:
                ray.init(address=address, runtime_env={"working_dir": str(ROOT), "excludes": UPLOAD_EXCLUDES},
                         **options)
            self.started_ray = True
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        use_gpu = device == "cuda" or (device == "auto" and gpus >= 1)
        if use_gpu:
            count = workers or gpus
            cpus_each = worker_cpus or 1
            needed, have, what = count, gpus, "GPU"
        else:
            cpus_each = worker_cpus or (max(1, cpus // workers) if workers else 1)
            count = workers or max(1, cpus // cpus_each)
            needed, have, what = count * cpus_each, cpus, "CPU"
        if count < 1 or needed > have:
            self.close()
            raise SystemExit(f"--ray {address}: {count} worker(s) need {needed} {what}(s) and the cluster has "
                             f"{have} ({resources}); lower --workers" + ("" if use_gpu else " or --worker-cpus") + ".")
        worker_device = "cuda" if use_gpu else ("cpu" if device == "auto" else device)
        # Threads that sleep between parallel regions (as benchmarks.run sets for itself), before torch loads;
        # the checkout on the path where a local cluster's workers would not find it (a driver run from
        # another folder).
        env_vars = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        if address == LOCAL:
            env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        actor = ray.remote(GridWorker).options(num_cpus=cpus_each, num_gpus=1 if use_gpu else 0,
                                              runtime_env={"env_vars": env_vars})
        self.layout = {"address": address, "workers": count, "cpus_per_worker": cpus_each,
                       "gpus_per_worker": 1 if use_gpu else 0, "cluster": {"CPU": cpus, "GPU": gpus,
                                                                           "nodes": len(ray.nodes())}}
        log(f"Ray at {address}: {count} worker(s), each {'1 GPU' if use_gpu else f'{cpus_each} CPU(s)'} "
            f"(cluster: {cpus} CPUs, {gpus} GPUs, {len(ray.nodes())} node(s)); loading the model on each.")
        self.workers = [actor.remote(model, worker_device, dtype, seed, threads or cpus_each) for _ in range(count)]
        self._infos = ray.get([w.info.remote() for w in self.workers])

    def info(self) -> tuple[dict[str, Any], float]:
        """The first worker's environment with the cluster layout, and the slowest worker's load time."""
        env = dict(self._infos[0]["environment"])
        env["command"] = " ".join(["python -m benchmarks.run", *sys.argv[1:]]) if sys.argv else None
        env["ray"] = {**self.layout, "worker_names": [i["worker"] for i in self._infos]}
        return env, max(i["load_s"] for i in self._infos)

    def build_items(self, tasks: tuple[str, ...], task_settings: dict[str, Any]) -> list[Item]:
        import ray

        return ray.get(self.workers[0].build_items.remote(tasks, task_settings))

    def run_grid(self, items: list[Item], specs: list[PolicySpec], budgets: list[float], seed: int,
                 query_aware: bool, parity: bool, store: ItemStore, show_progress: bool = True) -> GridResult:
        """Every item not yet in `store` as a task on a free worker; results written as they arrive."""
        import ray

        check, counterparts = parity_counterparts(items, specs, parity)
        queue = deque(store.pending(items))
        total = sum(item_runs(items[i], specs, budgets) for i in queue)
        if queue:  # one discarded run per engine on each worker, on the shortest item (as the serial run)
            shortest = [min(items, key=lambda item: item.encoded.n_context)]
            ray.get([w.warm_up.remote(shortest, specs, budgets[0], seed) for w in self.workers])
        specs_ref = ray.put(specs)
        running: dict[Any, tuple[int, Any]] = {}
        alive = list(self.workers)

        def submit(worker) -> None:
            index = queue.popleft()
            ref = worker.run_item.remote(index, items[index], specs_ref, budgets, seed, query_aware,
                                         counterparts if index == check else None)
            running[ref] = (index, worker)

        for worker in alive:
            if queue:
                submit(worker)
        failed: list[str] = []
        bar = progress_bar(total, show_progress)
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                index, worker = running.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayActorError as error:  # the worker is gone: the others go on
                    alive.remove(worker)
                    failed.append(f"{item_key(items[index])}: worker lost ({error})")
                    self.log(f"  ! worker lost on {item_key(items[index])}: {error}")
                    continue
                except ray.exceptions.RayTaskError as error:  # the item raised: record it, go on
                    failed.append(f"{item_key(items[index])}: {error.cause!r}")
                    self.log(f"  ! {item_key(items[index])}: {error.cause!r}")
                else:
                    store.write(result)
                    bar.update(item_runs(items[index], specs, budgets))
                if queue:
                    submit(worker)
        finally:
            bar.close()
        if failed or queue:
            raise RuntimeError(f"{len(failed)} item(s) failed and {len(queue)} did not run (no worker left): "
                               f"{'; '.join(failed[:3])}. Finished items are in {store.folder}; rerun the same "
                               "command to retry the rest.")
        return store.load(items)

    def overhead(self, lengths: list[int], specs: list[PolicySpec], budget: float, repeats: int, seed: int,
                 show_progress: bool = True) -> list[dict[str, Any]]:
        """The overhead measurement on the first worker, alone (the grid has finished)."""
        import ray

        return ray.get(self.workers[0].overhead.remote(lengths, specs, budget, repeats, seed))

    def reset_peak(self) -> None:
        import ray

        ray.get([w.reset_peak.remote() for w in self.workers])

    def peak_mib(self) -> float:
        """The largest peak resident memory of any worker since `reset_peak`."""
        import ray

        return max(ray.get([w.peak_mib.remote() for w in self.workers]))

    def close(self) -> None:
        """End the workers, and Ray itself if this object started it."""
        import ray

        for worker in getattr(self, "workers", []):
            ray.kill(worker)
        self.workers = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


__all__ = ["GridWorker", "RayGrid", "require_ray", "INSTALL_HINT"]
