"""KVCrush Explorer: `streamlit run app.py`.

The entry point builds the shared sidebar (model, policy, budget, the policy's options, prompt, run
options), loads the model once per process, and hands over to the page chosen in the navigation.
Pages live in pages/ and only render what the session's prepared prompt (`kvcrush.prepare`) selected
and generated; `ui.runs` orchestrates the runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. The model decodes while the
# browser draws the page on the same cores; with spinning threads the 2k-token example's 32-token
# answer took 16-23 s in Chromium instead of 2-3 s (2 CPU cores). An operator's own setting wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from ui import shell  # noqa: E402

HERE = Path(__file__).resolve().parent
PAGES = [
    st.Page(HERE / "pages" / "tokens.py", title="Tokens", icon=":material/text_fields:", default=True),
    st.Page(HERE / "pages" / "signatures.py", title="Signatures", icon=":material/grid_on:"),
    st.Page(HERE / "pages" / "groups.py", title="Groups", icon=":material/bubble_chart:"),
    st.Page(HERE / "pages" / "walk.py", title="Walk", icon=":material/footprint:"),
    st.Page(HERE / "pages" / "attention.py", title="Attention", icon=":material/visibility:"),
    st.Page(HERE / "pages" / "compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page(HERE / "pages" / "sweep.py", title="Sweep", icon=":material/show_chart:"),
]

st.set_page_config(page_title="KVCrush Explorer", page_icon=str(HERE / "assets" / "icon.svg"), layout="wide")
st.logo(str(HERE / "assets" / "logo.svg"), size="large")
page = st.navigation(PAGES)
shell.build()
page.run()
