"""Presentation helpers for the Streamlit explorer (app.py and pages/).

Nothing here decides which tokens to evict: every page renders traces that `kvcrush.generate`
recorded. Modules: `shell` (what app.py runs before a page: sidebar, model, config), `sidebar`,
`state` (typed session state and result store), `model` (the model and examples, cached per
process), `runs` (progress bars, caching, superseding older runs), `page` (summary and generated
text), `pick` (layer/head pickers), `tokens` and `units` (per-token and per-unit views of a trace),
`plots` (Plotly figure builders), `colors` (one colour-blind-safe palette), `embedding` (UMAP/PCA
maps), `textdiff`, `memory_panel`, `benchmarks`, `export`, `fmt`.
"""
