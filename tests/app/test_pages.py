"""Every page rendered by Streamlit's AppTest on the tiny random model, and widgets changing what is shown."""

from __future__ import annotations

import re

import numpy as np

from tests.app.helpers import chart, decode_array, html_bodies, legend_counts, metric, no_errors, token_view

PAGES = ("pages/tokens.py", "pages/signatures.py", "pages/groups.py", "pages/walk.py", "pages/attention.py",
         "pages/compare.py", "pages/sweep.py")


def test_tokens_page_renders_coloured_tokens_grid_and_strip(app):
    at = app.run()
    no_errors(at)
    view = token_view(at)
    spans = re.findall(r'<span class="kvt kvt-(\w+)"', view)
    assert len(spans) == 400  # the default window
    assert {"kept", "evicted", "representative"} <= set(spans)
    start = at.slider(key="tok_start").value  # the first visit moves the window to the needle
    assert start > 0 and f'title="#{start} ' in view and "status: " in view  # hover tooltips
    counts = legend_counts(at)
    assert counts["representative"] > 0 and counts["evicted"] > 0 and counts["recent"] == 32
    grid = chart(at, "tok_grid")
    assert len(decode_array(grid["data"][0]["x"])) == 2 * 2  # 2 layers x 2 KV heads
    strip = chart(at, "tok_strip")
    assert decode_array(strip["data"][0]["z"]).shape[0] == 2
    assert at.get("download_button")


def test_lower_budget_evicts_more_tokens_and_bytes(app):
    at = app.run()
    at.slider(key="budget_pct").set_value(50).run()
    no_errors(at)
    half = legend_counts(at)
    after_half = metric(at, "KV cache after")
    at.slider(key="budget_pct").set_value(10).run()
    no_errors(at)
    tenth = legend_counts(at)
    assert tenth["evicted"] > half["evicted"]
    assert tenth["kept"] + tenth["representative"] < half["kept"] + half["representative"]
    assert metric(at, "KV cache after") != after_half
    assert "at **10%**" in at.markdown[0].value


def test_layer_and_head_pickers_change_the_view(app):
    at = app.run()
    before = token_view(at)
    at.selectbox(key="tok_layer").set_value(1)
    at.selectbox(key="tok_head").set_value(1).run()
    no_errors(at)
    assert "Layer 1, KV head 1" in at.markdown[1].value
    assert token_view(at) != before
    grid = chart(at, "tok_grid")
    selected = grid["data"][1]
    assert list(decode_array(selected["x"])) == [1] and list(decode_array(selected["y"])) == [1]


def test_token_budget_and_find_text_move_the_window(app):
    at = app.run()
    at.radio(key="budget_mode").set_value("tokens").run()
    at.number_input(key="budget_tokens").set_value(64).run()
    no_errors(at)
    counts = legend_counts(at)
    assert counts["kept"] + counts["representative"] + counts["sink"] + counts["recent"] == 64
    at.text_input(key="tok_find").input("special magic number").run()
    no_errors(at)
    assert at.slider(key="tok_start").value > 0


def test_streaming_policy_has_no_signatures_and_says_so(app):
    at = app.run()
    at.selectbox(key="policy").set_value("streaming").run()
    no_errors(at)
    assert legend_counts(at)["representative"] == 0
    at.switch_page("pages/signatures.py").run()
    no_errors(at)
    assert any("No signatures to show" in info.value for info in at.info)


def test_signatures_page_heatmap_anchor_row_and_sorting(app):
    at = app.run()
    at.switch_page("pages/signatures.py").run()
    no_errors(at)
    spec = chart(at, "sig_heatmap")
    traces = {trace["name"]: trace for trace in spec["data"]}
    assert list(decode_array(traces["anchor"]["z"]).ravel()) == [0, 1, 0, 1]  # alternating anchor, 4 query heads
    bits = traces["bits"]
    by_position = list(bits["y"])
    assert decode_array(bits["z"]).shape[1] == 4
    at.radio(key="sig_sort").set_value("distance to the anchor").run()
    no_errors(at)
    spec = chart(at, "sig_heatmap")
    traces = {trace["name"]: trace for trace in spec["data"]}
    distances = decode_array(traces["distance"]["z"]).ravel().astype(int)
    assert list(distances) == sorted(distances)
    assert list(traces["bits"]["y"]) != by_position
    at.selectbox(key="sig_layer").set_value(1).run()
    no_errors(at)
    assert "Layer 1:" in at.caption[0].value


def test_groups_page_histogram_buckets_and_map(app):
    at = app.run()
    at.switch_page("pages/groups.py").run()
    no_errors(at)
    hist = chart(at, "grp_hist")
    assert hist["data"][0]["name"].startswith("KVCrush representative")
    buckets = at.dataframe[0].value
    n_buckets = len(buckets)
    assert n_buckets > 0 and buckets["size"].sum() > n_buckets
    figure = chart(at, "grp_map")
    assert "PCA map" in figure["layout"]["title"]["text"]
    at.slider(key="opt_kvcrush_crush_fraction").set_value(0.5).run()
    no_errors(at)
    assert len(at.dataframe[0].value) > n_buckets  # more KVCrush budget, more representatives
    at.radio(key="grp_color").set_value("bucket").run()
    no_errors(at)
    assert chart(at, "grp_map")["data"][1]["name"] == "candidates by bucket"


def test_block_granularity_renders_blocks(app):
    at = app.run()
    at.selectbox(key="opt_kvcrush_granularity").set_value("block").run()
    at.number_input(key="opt_kvcrush_block_size").set_value(8).run()
    no_errors(at)
    at.switch_page("pages/signatures.py").run()
    no_errors(at)
    assert "middle blocks × 32 signature bits" in at.caption[0].value  # 8 tokens x 4 heads
    at.switch_page("pages/groups.py").run()
    no_errors(at)
    assert "candidate blocks" in at.caption[0].value


def test_bad_settings_show_an_error_and_the_app_stays_usable(app):
    at = app.run()
    at.selectbox(key="opt_kvcrush_granularity").set_value("block").run()
    at.number_input(key="opt_kvcrush_block_size").set_value(256)
    at.slider(key="budget_pct").set_value(2).run()
    assert not at.exception
    assert any("block" in error.value.lower() for error in at.error)
    at.selectbox(key="opt_kvcrush_granularity").set_value("token").run()
    no_errors(at)
    assert token_view(at)


def test_compare_page_diffs_bytes_jaccard_and_memory_projection(app):
    at = app.run()
    at.switch_page("pages/compare.py").run()
    no_errors(at)
    assert at.multiselect(key="cmp_policies").value == ["kvcrush", "snapkv"]
    at.multiselect(key="cmp_policies").select("streaming").run()
    no_errors(at)
    assert sum('class="kv-diff"' in body for body in html_bodies(at)) == 3
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["kvcrush (snapkv)", "snapkv", "streaming"]
    assert (table["kv_bytes_after"] < table["kv_bytes_before"]).all()
    jaccard = chart(at, "cmp_jaccard")
    assert len(jaccard["data"]) == 3  # three pairs
    compressed = metric(at, "Compressed")
    assert metric(at, "Projected reduction") == "4.00x"  # 25% of 32k tokens on Llama-3-8B
    assert metric(at, "Full KV cache") == "4.00 GiB"
    at.slider(key="budget_pct").set_value(50).run()
    no_errors(at)
    assert metric(at, "Compressed") != compressed and metric(at, "Projected reduction") == "2.00x"
    at.selectbox(key="mem_preset").set_value("Llama-3-70B").run()
    assert at.number_input(key="mem_layers").value == 80
    at.number_input(key="mem_tokens").set_value(131072).run()
    no_errors(at)
    assert metric(at, "Full KV cache") == "40.00 GiB"


def test_sweep_page_runs_budgets_and_plots_quality(app):
    at = app.run()
    at.switch_page("pages/sweep.py").run()
    no_errors(at)
    at.multiselect(key="sweep_policies").set_value(["snapkv", "streaming"])
    at.multiselect(key="sweep_budgets").set_value([10, 50])
    at.button(key="sweep_run").click().run()
    no_errors(at)
    frame = at.dataframe[0].value
    assert len(frame) == 1 + 2 * 2
    full = frame[frame["policy"] == "full"].iloc[0]
    assert full["agreement"] == 1.0 and np.isfinite(full["nll"])
    assert frame["nll"].notna().all()
    spec = chart(at, "sweep_plot")
    names = {trace.get("name") for trace in spec["data"]}
    assert {"snapkv", "streaming"} <= names


def test_pasted_text_and_uploads(app):
    at = app.run()
    at.radio(key="prompt_source").set_value("Paste text").run()
    assert any("Paste some text" in info.value for info in at.info)
    at.text_area(key="prompt_text").input("The <b>cat</b> sat on the mat. " * 40).run()
    no_errors(at)
    view = token_view(at)
    assert "&lt;" in view and "&gt;" in view and "<b>" not in view  # tokens are escaped, never HTML
    at.radio(key="prompt_source").set_value("Upload .txt").run()
    at.file_uploader(key="prompt_file").set_value(("notes.txt", b"Plain text from a file. " * 50, "text/plain")).run()
    no_errors(at)
    assert "file" in token_view(at)
    at.file_uploader(key="prompt_file").set_value(("blob.txt", b"\x00\x01binary", "text/plain")).run()
    assert not at.exception
    assert any("binary" in info.value for info in at.info)


def test_oversized_pasted_text_is_refused_with_the_limit(app):
    at = app.run()
    at.radio(key="prompt_source").set_value("Paste text").run()
    at.text_area(key="prompt_text").input("é" * 1_100_000).run()  # under max_chars, over 2 MiB of UTF-8
    assert not at.exception
    assert any("the limit is 2,097,152 bytes" in info.value for info in at.info)


def test_auto_run_off_keeps_the_previous_trace_until_run_is_pressed(app):
    at = app.run()
    before = legend_counts(at)
    at.toggle(key="auto_run").set_value(False)
    at.slider(key="budget_pct").set_value(10).run()
    no_errors(at)
    assert any("showing the previous run" in w.value for w in at.warning)
    assert legend_counts(at) == before
    at.button(key="run_btn").click().run()
    no_errors(at)
    assert not at.warning
    assert legend_counts(at)["evicted"] > before["evicted"]


def test_every_page_renders_without_errors(app):
    at = app.run()
    for page in PAGES:
        at.switch_page(page).run()
        no_errors(at)
        assert at.title[0].value == page.split("/")[1].removesuffix(".py").capitalize()


def test_a_bad_model_name_shows_an_error_and_clearing_it_recovers(app):
    at = app.run()
    at.text_input(key="model_name").input("./no/such/folder").run()
    assert not at.exception
    assert any("could not be loaded" in error.value for error in at.error)
    at.text_input(key="model_name").input("random:tiny").run()
    no_errors(at)
    assert token_view(at)


def test_run_again_recomputes_and_full_and_pyramidkv_render(app):
    from ui.state import RunRequest

    at = app.run()
    key = RunRequest.from_config(at.session_state["_config"]).key
    first = at.session_state["_results"].get(key)
    at.button(key="rerun_btn").click().run()
    no_errors(at)
    again = at.session_state["_results"].get(key)
    assert again is not None and again is not first  # computed anew, not taken from the cache
    assert again.finished_at > first.finished_at
    at.selectbox(key="policy").set_value("full").run()
    no_errors(at)
    counts = legend_counts(at)
    assert counts["evicted"] == 0 and counts["kept"] > 0
    at.selectbox(key="policy").set_value("pyramidkv").run()
    no_errors(at)
    kept = decode_array(chart(at, "tok_grid")["data"][0]["customdata"])[:, 0]
    assert kept[0] > kept[-1]  # PyramidKV keeps more in lower layers


def test_query_aware_run_mentions_the_question_window(app):
    at = app.run()
    at.checkbox(key="query_aware").check().run()
    no_errors(at)
    assert any("the observation window, always kept" in caption.value for caption in at.caption)


def test_sweep_page_reads_benchmark_csvs(app, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    rows = ["task,policy,budget_fraction,example,accuracy"]
    rows += [f"needle,{p},{b},{e},{a}" for p, b, e, a in [("snapkv", 0.25, 1, 1.0), ("snapkv", 0.25, 2, 0.0),
                                                          ("snapkv", 0.5, 1, 1.0), ("kvcrush", 0.25, 1, 0.0),
                                                          ("kvcrush", 0.5, 1, 1.0)]]
    rows += ["squad,snapkv,0.25,1,0.3"]
    (folder / "quick.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("KVCRUSH_APP_BENCHMARKS", str(tmp_path))
    at = app.run()
    at.switch_page("pages/sweep.py").run()
    no_errors(at)
    chosen = {box.label: box.value for box in at.selectbox}
    assert chosen["x"] == "budget_fraction" and chosen["y"] == "accuracy" and chosen["colour"] == "policy"
    spec = chart(at, "bench_plot")
    snapkv = next(trace for trace in spec["data"] if trace["name"] == "snapkv")
    assert list(decode_array(snapkv["y"]).astype(float)) == [0.5, 1.0]  # mean over examples per budget
    assert len(at.dataframe[-1].value) == 5  # the needle rows; the task filter hides squad
    next(box for box in at.selectbox if box.label == "task").set_value("squad").run()
    no_errors(at)
    assert len(at.dataframe[-1].value) == 1
