"""Compare: two to four policies at the same budget, against the full cache, plus a memory projection.

Every run here decodes from the session's one prepared prompt (`ui.runs.run_all`): one prefill in all.
"""

from __future__ import annotations

import html
from itertools import combinations

import pandas as pd
import streamlit as st

import kvcrush
from kvcrush.metrics import contains_answer, kept_jaccard, token_agreement
from kvcrush.sizes import format_bytes
from ui import export, memory_panel, page, plots, run_view, runs, textdiff
from ui import model as model_ui
from ui.colors import policy_color
from ui.fmt import ratio, seconds
from ui.state import RunRequest, results

DEFAULT = ["kvcrush", "snapkv"]

st.title("Compare")
config, lm = page.context()
if config.prompt is None:
    st.info(config.prompt_error or "Choose a prompt in the sidebar.")
    st.stop()

names = list(kvcrush.POLICIES)
top = st.columns([3, 1])
chosen = top[0].multiselect("Policies to compare (2 to 4, all at the sidebar's budget)", names, default=DEFAULT,
                            max_selections=4, key="cmp_policies")
clicked = top[1].button("Run comparison", key="cmp_run", type="primary")
requests = {n: RunRequest.from_config(config, config.policy.with_name(n)) for n in chosen}
full_request = RunRequest.from_config(config, config.policy.with_name("full"))
flag = config.run_request

records = None
if len(chosen) < 2:
    st.warning("Pick at least two policies.")
else:
    unique = list({r.key: r for r in [full_request, *requests.values()]}.values())
    store = results()
    ready = all(store.get(r.key) is not None for r in unique) and flag != "force"
    if ready or config.options.auto_run or flag or clicked:
        found = runs.run_all(lm, unique, force=flag == "force", what="compare · ")
        if found is not None:
            by_key = {r.request.key: r for r in found}
            full = by_key[full_request.key]
            records = {n: by_key[r.key] for n, r in requests.items()}
    else:
        st.info("Press **Run comparison** (or **Run** in the sidebar) to compute these policies.")

if records is not None:
    answers = config.prompt.answers
    st.markdown(f"**Full cache** ({format_bytes(full.result.kv_bytes_before)} of KV):")
    run_view.generated(full, answers)
    st.caption("Below, each policy's text against the full cache's: underlined blue words are new, "
               "struck-through vermillion words are missing.")
    columns = st.columns(len(records))
    rows = []
    for column, (name, record) in zip(columns, records.items(), strict=True):
        result = record.result
        agreement = token_agreement(result.new_token_ids, full.result.new_token_ids)
        found = any(contains_answer(result.text, a) for a in answers) if answers else None
        with column.container(key=f"cmp_col_{name}", border=True):
            st.html(f'<div style="font-weight:700;border-bottom:4px solid {policy_color(name)};">'
                    f"{html.escape(record.label)} · {html.escape(record.request.policy.budget_text)}</div>")
            st.html(textdiff.diff_html(result.text, full.result.text))
            sub = st.columns(2)
            sub[0].metric("KV after", format_bytes(result.kv_bytes_after),
                          help=f"before: {format_bytes(result.kv_bytes_before)}")
            sub[1].metric("Reduction", ratio(result.kv_bytes_before, result.kv_bytes_after))
            sub = st.columns(2)
            sub[0].metric("Agreement", f"{agreement:.0%}", help="Share of generated tokens equal to the full cache's.")
            sub[1].metric("Policy", seconds(result.timings.policy_s),
                          help=f"Scoring {seconds(result.timings.score_s)} plus selection "
                               f"{seconds(result.timings.select_s)}; the prefill is shared by every column.")
            interval = int(result.trace.policy.get("decode_interval") or 0)
            sub = st.columns(2)
            sub[0].metric("KV after answer", format_bytes(result.kv_bytes_final) if result.kv_bytes_final else "n/a",
                          help="The whole cache after the answer (question, template and generated tokens "
                               "included), measured from its tensors"
                               + (f"; decode-time eviction every {interval} tokens kept it at the budget."
                                  if interval else "; no decode-time eviction, so it grew with the answer."))
            if found is not None:
                sub[1].caption("answer found" if found else "answer not found")
        timings = result.timings
        rows.append({
            "policy": record.label, "budget": record.request.policy.budget_text,
            "kv_bytes_before": result.kv_bytes_before, "kv_bytes_after": result.kv_bytes_after,
            "reduction": result.kv_bytes_before / max(result.kv_bytes_after, 1),
            "kv_bytes_final": result.kv_bytes_final, "decode_interval": interval,
            "decode_evictions": len(result.decode_evictions), "peak_cache_tokens": result.peak_cache_tokens,
            "prefill_s": timings.prefill_s, "prefill_reused": timings.prefill_reused, "score_s": timings.score_s,
            "score_reused": timings.score_reused, "select_s": timings.select_s, "policy_s": timings.policy_s,
            "crush_s": timings.crush_s, "decode_s": timings.decode_s, "decode_tokens": timings.decode_tokens,
            "agreement_with_full": agreement, "word_similarity_with_full": textdiff.similarity(result.text,
                                                                                              full.result.text),
            "answer_found": found, "text": result.text,
        })
    table = pd.DataFrame(rows)
    labels = [r.label for r in records.values()]
    left, right = st.columns(2)
    left.plotly_chart(plots.policy_bars(labels, [r.result.kv_bytes_after / 1024**2 for r in records.values()],
                                        "KV cache after compression", "MiB", ".2f"),
                      key="cmp_bytes", config={"displayModeBar": False})
    right.plotly_chart(plots.timing_bars(labels, {
        "policy (score + select)": [r.result.timings.policy_s for r in records.values()],
        "decode": [r.result.timings.decode_s for r in records.values()],
    }), key="cmp_times", config={"displayModeBar": False})
    right.caption(f"One prefill of the prompt ({seconds(full.result.timings.prefill_s)}) serves every policy "
                  "here and the full cache.")

    pairs = {}
    for a, b in combinations(records.values(), 2):
        if len(a.result.trace.layers) == len(b.result.trace.layers):
            pairs[f"{a.label} vs {b.label}"] = [kept_jaccard(x, y) for x, y in
                                                 zip(a.result.trace.layers, b.result.trace.layers, strict=True)]
    if pairs:
        st.plotly_chart(plots.jaccard_lines(pairs), key="cmp_jaccard", config={"displayModeBar": False})
    with st.expander("Comparison table and downloads"):
        st.dataframe(table, hide_index=True, key="cmp_table")
        export.csv_button(table, "comparison", "cmp_csv")
        if pairs:
            jaccard = pd.DataFrame(pairs)
            jaccard.insert(0, "layer", range(len(jaccard)))
            export.csv_button(jaccard, "kept-jaccard-per-layer", "cmp_jaccard_csv", "Download Jaccard per layer (CSV)")

n_context = model_ui.count_tokens(lm, config.prompt.context, config.prompt.question)[0]
st.subheader("What this budget saves on a larger model")
memory_panel.render(memory_panel.budget_fraction(config.policy.budget, n_context), config.policy.budget_text,
                    int(dict(config.policy.normalized().options).get("kv_bits", 16)))
