"""Presentation helpers for the Streamlit explorer (app.py and pages/).

Nothing here decides which tokens to evict: every page renders what the session's prepared prompt
(`kvcrush.prepare`) selected and generated. Modules: `shell` (what app.py runs before a page:
sidebar, model, config), `sidebar`, `policy_options` and `option_widgets` (the sidebar's policy
options, read from each policy's declarations), `state` (typed session state, result and selection
stores), `session_prompt` (the session's one prepared prompt), `model` (the model and examples,
cached per process), `runs` (prefill once, selections first, caching, superseding older runs),
`answer` (an answer decoding on a worker thread while the page renders), `page` (what every page
starts from), `run_view` (a run's summary and streamed or finished answer), `pick` (layer/head pickers),
`tokens` and `units` (per-token and per-unit views of a trace), `plots` (Plotly figure builders), `colors`
(one colour-blind-safe palette), `embedding` (the cached UMAP/PCA map of `kvcrush.explain.projection`),
`textdiff`, `memory_panel`, `benchmarks`, `export`, `fmt`. No module here imports torch: what a view needs
computed (kept-set agreement, the cache after each decode step, signature maps) comes from `kvcrush`.
"""
