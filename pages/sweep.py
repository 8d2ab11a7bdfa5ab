"""Sweep: quality versus budget on the current prompt, and benchmark CSVs from benchmarks/.

One prefill serves the whole sweep: the full cache's answer is the reference, and every other run
scores its likelihood (`reference_ids`) on the same prepared prompt (`ui.runs.run_all`).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

import kvcrush
from kvcrush.metrics import contains_answer, token_agreement
from ui import benchmarks, export, page, plots, runs
from ui.state import RunRecord, RunRequest

BUDGETS = [5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90]
METRICS = {"agreement": "agreement with the full-cache output",
           "nll": "NLL of the full-cache continuation (lower is better)"}
SWEEP_STATE = "_sweep"


def _row(record: RunRecord, fraction: float, full_ids: list[int], answers: tuple[str, ...]) -> dict:
    result = record.result
    return {
        "policy": record.label,
        "budget_fraction": fraction,
        "agreement": token_agreement(result.new_token_ids, full_ids),
        "nll": result.reference_nll,
        "answer_found": any(contains_answer(result.text, a) for a in answers) if answers else None,
        "kv_bytes_after": result.kv_bytes_after,
        "reduction": result.kv_bytes_before / max(result.kv_bytes_after, 1),
        "prefill_s": result.timings.prefill_s, "score_s": result.timings.score_s,
        "select_s": result.timings.select_s, "policy_s": result.timings.policy_s,
        "decode_s": result.timings.decode_s, "text": result.text,
    }


def _sweep(config, lm, policies: list[str], budgets: list[int]) -> list[dict] | None:
    full = runs.reference_run(config, lm)
    if full is None:
        return None
    full_ids = tuple(full.result.new_token_ids)
    plan = [(p, b / 100) for p in policies for b in budgets]
    requests = [RunRequest.from_config(config, config.policy.with_name("full"), reference_ids=full_ids)]
    requests += [RunRequest.from_config(config, config.policy.with_name(p).with_budget(1.0 if f >= 1 else f),
                                        reference_ids=full_ids) for p, f in plan]
    records = runs.run_all(lm, requests, what="sweep · ")
    if records is None:
        return None
    answers = config.prompt.answers
    rows = [_row(records[0], 1.0, list(full_ids), answers)]
    rows += [_row(record, fraction, list(full_ids), answers) for record, (_, fraction) in zip(records[1:], plan,
                                                                                                 strict=True)]
    return rows


st.title("Sweep")
config, lm = page.context()
if config.prompt is None:
    st.info(config.prompt_error or "Choose a prompt in the sidebar.")
else:
    cols = st.columns([2, 2, 1])
    names = [n for n, cls in kvcrush.POLICIES.items() if cls.evicts]
    policies = cols[0].multiselect("Policies", names, default=["kvcrush", "snapkv"], key="sweep_policies")
    budgets = cols[1].multiselect("Budgets (% of prompt)", BUDGETS, default=[10, 25, 50], key="sweep_budgets")
    n_runs = len(policies) * len(budgets) + 2
    clicked = cols[2].button("Run sweep", key="sweep_run", type="primary", disabled=not (policies and budgets))
    st.caption(f"{n_runs} runs (including the full cache twice: its output is the reference, then its own "
               f"likelihood), {config.options.max_new_tokens} new tokens each, one prefill for all; every "
               "policy uses the sidebar's options where it declares them.")
    if clicked:
        rows = _sweep(config, lm, policies, sorted(budgets))
        if rows is not None:
            st.session_state[SWEEP_STATE] = {"rows": rows, "prompt": config.prompt.name,
                                             "tokens": config.options.max_new_tokens}
    sweep = st.session_state.get(SWEEP_STATE)
    if sweep:
        st.caption(f"Last sweep: {sweep['prompt']}, {sweep['tokens']} new tokens.")
        with st.container(key="sweep_view"):
            st.plotly_chart(plots.sweep_lines(sweep["rows"], METRICS), key="sweep_plot",
                            config={"displayModeBar": False})
        frame = pd.DataFrame(sweep["rows"])
        st.dataframe(frame, hide_index=True, key="sweep_table")
        export.csv_button(frame, "sweep", "sweep_csv")
    else:
        st.info("Choose policies and budgets, then press **Run sweep**.")

st.subheader("Benchmark results")
committed = benchmarks.latest_summary()
if committed and committed.get("best"):
    with st.expander(f"Committed results: {committed.get('mode', '')} run, verdicts and best system per budget "
                     "(95% intervals)", expanded=False):
        st.markdown(benchmarks.latest_verdicts(committed))
files = benchmarks.find_csvs()
if not files:
    st.caption("No benchmark CSV under benchmarks/ yet; the benchmark script writes them there.")
else:
    root = benchmarks.folder()
    chosen = st.selectbox("Benchmark CSV", files, index=files.index(benchmarks.default_csv(files, root)),
                          format_func=lambda p: str(p.relative_to(root)), key="bench_file",
                          help="Opens on the committed standard run (results/latest/results.csv); the list is "
                               "newest first.")
    try:
        frame = benchmarks.load(chosen)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        st.error(f"Could not read {chosen.name}: {error}")
    else:
        tag = benchmarks.slug(chosen)  # widget keys per file: its columns and values differ
        filters = [c for c in benchmarks.FILTERS if c in frame.columns and frame[c].nunique() > 1]
        if filters:
            cols = st.columns(len(filters))
            for col, name in zip(cols, filters, strict=True):
                values = list(dict.fromkeys(frame[name].tolist()))
                value = col.selectbox(name, values, key=f"bench_filter_{name}_{tag}")
                frame = frame[frame[name] == value]
        x, y, color = benchmarks.guess(frame)
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        if x and y:
            cols = st.columns(3)
            x = cols[0].selectbox("x", numeric, index=numeric.index(x), key=f"bench_x_{tag}")
            y = cols[1].selectbox("y", numeric, index=numeric.index(y), key=f"bench_y_{tag}")
            categorical = [None] + [c for c in frame.columns if c not in numeric]
            color = cols[2].selectbox("colour", categorical, index=categorical.index(color), key=f"bench_color_{tag}")
            st.plotly_chart(plots.benchmark_figure(frame, x, y, color), key="bench_plot",
                            config={"displayModeBar": False})
        st.dataframe(frame, hide_index=True, key="bench_table")
