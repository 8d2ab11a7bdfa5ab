"""The Sweep page opens on the committed standard results, and the sidebar labels options in plain words."""

from __future__ import annotations

import os

from tests.app.helpers import no_errors


def test_sweep_page_opens_on_the_standard_results_csv(app, tmp_path, monkeypatch):
    standard = tmp_path / "results" / "latest" / "results.csv"
    other = tmp_path / "results" / "quantized" / "quantized.csv"
    for path, mtime in ((standard, 1_000), (other, 2_000)):  # the standard run is the older file
        path.parent.mkdir(parents=True)
        path.write_text("task,policy,budget,score\nneedle,snapkv,0.25,1\nneedle,snapkv,0.5,1\n")
        os.utime(path, (mtime, mtime))
    monkeypatch.setenv("KVCRUSH_APP_BENCHMARKS", str(tmp_path))
    at = app.run()
    at.switch_page("pages/sweep.py").run()
    no_errors(at)
    assert at.selectbox(key="bench_file").value == standard
    assert {box.label: box.value for box in at.selectbox}["x"] == "budget"


def test_sidebar_option_labels_are_words(app):
    at = app.run()
    no_errors(at)
    labels = {widget.key: widget.label for kind in ("selectbox", "number_input", "slider", "checkbox")
              for widget in getattr(at.sidebar, kind) if widget.key and widget.key.startswith("opt_")}
    kv_bits = [text for key, text in labels.items() if key.endswith("_kv_bits")]
    assert kv_bits == ["KV bits"]
    assert "Crush fraction" in labels.values() and not any("Kv" in text or "_" in text for text in labels.values())
