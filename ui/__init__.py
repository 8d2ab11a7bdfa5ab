"""Presentation helpers for the Streamlit explorer (app.py and pages/).

Nothing here decides which tokens to evict: every page renders what the session's prepared prompt
(`kvcrush.prepare`) selected and generated. Modules: `shell` (what app.py runs before a page:
sidebar, model, config), `sidebar`, `policy_options` and `option_widgets` (the sidebar's policy
options, read from each policy's declarations), `state` (typed session state, result and selection
stores), `session_prompt` (the session's one prepared prompt), `model` (the model and examples,
cached per process), `runs` (prefill once, selections first, caching, superseding older runs),
`answer` (an answer decoding on a worker thread while the page renders), `page` (summary and
streamed or finished answer), `pick` (layer/head pickers), `tokens` and `units` (per-token and
per-unit views of a trace), `decode_view` (what a head holds after each
generated token with decode-time eviction), `plots` (Plotly figure builders), `colors` (one colour-blind-safe
palette), `embedding` (UMAP/PCA maps), `textdiff`, `memory_panel`, `benchmarks`, `export`, `fmt`.
"""
