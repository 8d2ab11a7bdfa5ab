"""The benchmark grid on a local two-worker Ray cluster (`benchmarks.distributed`), with the tiny random model.

One serial run and one Ray run of the same small grid (6 items: needle, likelihood and agreement, our
SnapKV, KVCrush and seeded random policy, kvpress's SnapKV and its parity item). The Ray run starts
from a folder that already holds two of the serial run's items, as a rerun after an interrupted run
would: it must skip those two, leave their files untouched, run the other four on both workers, and
merge to the serial run's samples, sample for sample, timings aside. A serial rerun after deleting an
item file runs only that one. Both runs use one torch thread (a Ray CPU worker uses ``--worker-cpus``
threads), so even the floating-point sums are the same. About a minute on 2 CPU cores, most of it Ray
starting its workers (each imports torch and transformers and loads the model).
"""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest

from benchmarks.distributed import INSTALL_HINT
from benchmarks.grid import parse_policies
from benchmarks.quality import GridMismatch, ItemStore, grid_fingerprint
from benchmarks.run import main

COMMON = [
    "--quick", "--model", "random:tiny", "--device", "cpu", "--samples", "2", "--budgets", "0.5",
    "--policies", "snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv", "random",
    "--tasks", "needle", "likelihood", "agreement", "--needle-lengths", "256", "--needle-depths", "0.5",
    "--likelihood-context", "256", "--new-tokens", "4", "--no-overhead", "--no-progress",
]
ITEMS = 6  # 2 samples of each of the 3 tasks
FINISHED = ("00001.json", "00004.json")  # items already in the folder when the Ray run starts
TIMING = ("prefill_s", "score_s", "select_s", "crush_s", "decode_s", "decode_ms_per_token")


def _samples(folder) -> pd.DataFrame:
    frame = pd.read_csv(folder / "samples.csv", keep_default_na=False)
    return frame.drop(columns=[c for c in TIMING if c in frame.columns])


def _item_files(folder) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((folder / "items").glob("0*.json"))}


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is optional (pip install ray); requirements.txt installs it")
    base = tmp_path_factory.mktemp("ray-grid")
    serial = main([*COMMON, "--threads", "1", "--out", str(base / "serial")])
    (base / "ray" / "items").mkdir(parents=True)
    for name in ("grid.json", *FINISHED):  # what an interrupted run into --out ray would have left
        shutil.copy2(serial / "items" / name, base / "ray" / "items" / name)
    stamps = {name: (base / "ray" / "items" / name).stat().st_mtime_ns for name in FINISHED}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        on_ray = main([*COMMON, "--ray", "local", "--workers", "2", "--worker-cpus", "1", "--out", str(base / "ray")])
    finally:
        ray.shutdown()
    return serial, on_ray, stamps


def test_ray_samples_equal_the_serial_run_sample_for_sample(ray_runs):
    serial, on_ray, _ = ray_runs
    expected, got = _samples(serial), _samples(on_ray)
    assert len(expected) == ITEMS * (1 + 4) and set(expected["policy"]) == {
        "full", "snapkv", "kvcrush:snapkv:alternating", "kvpress:snapkv", "random"}
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert (got["text"] != "").any()  # the agreement answers were decoded and compared too
    pd.testing.assert_frame_equal(pd.read_csv(on_ray / "parity.csv"), pd.read_csv(serial / "parity.csv"),
                                  check_exact=True)
    assert len(pd.read_csv(on_ray / "parity.csv")) == 1  # kvpress:snapkv against our snapkv, on the needle item
    results = pd.read_csv(on_ray / "results.csv").drop(columns=list(TIMING))
    pd.testing.assert_frame_equal(results, pd.read_csv(serial / "results.csv").drop(columns=list(TIMING)))


def test_the_ray_run_skips_finished_items_and_shares_the_rest_between_two_workers(ray_runs):
    serial, on_ray, stamps = ray_runs
    summary = json.loads((on_ray / "summary.json").read_text())
    assert summary["errors"] == [] and summary["items"] == {"total": ITEMS, "resumed": 2, "ran": ITEMS - 2}
    assert summary["environment"]["ray"]["workers"] == 2 and summary["environment"]["torch_threads"] == 1
    items, serial_items = _item_files(on_ray), _item_files(serial)
    assert len(items) == ITEMS
    for name in FINISHED:  # skipped: the file is the serial run's, never rewritten
        assert (on_ray / "items" / name).stat().st_mtime_ns == stamps[name]
        assert items[name] == serial_items[name]
    workers = {items[name]["produced"]["worker"] for name in items if name not in FINISHED}
    assert workers == set(summary["environment"]["ray"]["worker_names"]) and len(workers) == 2
    assert serial_items["00000.json"]["produced"]["worker"] not in workers


def test_a_serial_rerun_resumes_the_same_way(ray_runs):
    serial, _, _ = ray_runs
    expected = _samples(serial)
    (serial / "items" / "00002.json").unlink()
    main([*COMMON, "--threads", "1", "--out", str(serial)])
    assert json.loads((serial / "summary.json").read_text())["items"] == {"total": ITEMS, "resumed": ITEMS - 1,
                                                                         "ran": 1}
    pd.testing.assert_frame_equal(_samples(serial), expected, check_exact=True)


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    with pytest.raises(SystemExit) as exit_info:
        main([*COMMON, "--ray", "local", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == INSTALL_HINT and "pip install ray" in INSTALL_HINT
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_workers_without_ray_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*COMMON, "--workers", "2"])
    assert exit_info.value.code == 2 and "--ray" in capsys.readouterr().err


def test_an_output_folder_of_another_grid_is_refused(tmp_path):
    def fingerprint(window: int) -> dict:
        return grid_fingerprint("random:tiny", "cpu", None, [], parse_policies(["snapkv"], window), [0.5], 0,
                                False, True)

    ItemStore(tmp_path, fingerprint(32))
    ItemStore(tmp_path, fingerprint(32))  # the same grid: resumes
    with pytest.raises(GridMismatch, match="differs in: policies"):  # same label, other options
        ItemStore(tmp_path, fingerprint(64))
