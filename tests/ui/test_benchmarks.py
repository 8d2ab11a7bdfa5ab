"""Which benchmark CSV the Sweep page opens on (`ui.benchmarks.default_csv`)."""

from __future__ import annotations

import os

from ui import benchmarks


def _csv(path, mtime: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("policy,budget,score\nsnapkv,0.25,1\n")
    os.utime(path, (mtime, mtime))
    return path


def test_the_committed_standard_results_come_first_even_when_others_are_newer(tmp_path):
    standard = _csv(tmp_path / "results" / "latest" / "results.csv", 1_000)
    _csv(tmp_path / "results" / "quantized" / "quantized.csv", 2_000)
    files = benchmarks.find_csvs(tmp_path)
    assert files[0].name == "quantized.csv"  # the list stays newest first
    assert benchmarks.default_csv(files, tmp_path) == standard


def test_without_the_standard_results_the_newest_csv_is_chosen(tmp_path):
    _csv(tmp_path / "old.csv", 1_000)
    newest = _csv(tmp_path / "new.csv", 2_000)
    assert benchmarks.default_csv(benchmarks.find_csvs(tmp_path), tmp_path) == newest
    assert benchmarks.default_csv([], tmp_path) is None


def test_the_checkout_opens_on_its_committed_standard_run(monkeypatch):
    monkeypatch.delenv(benchmarks.FOLDER_ENV, raising=False)
    chosen = benchmarks.default_csv(benchmarks.find_csvs())
    assert chosen == benchmarks.ROOT / "results" / "latest" / "results.csv"
    assert benchmarks.latest_summary()["mode"] == "standard"  # the committed run is the standard one
