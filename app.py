"""KVCrush Explorer: `streamlit run app.py`.

The entry point builds the shared sidebar (model, policy, budget, KVCrush options, prompt, run
options), loads the model once per process, and hands over to the page chosen in the navigation.
Pages live in pages/ and only render traces recorded by `kvcrush.generate`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import shell

HERE = Path(__file__).resolve().parent
PAGES = [
    st.Page(HERE / "pages" / "tokens.py", title="Tokens", icon=":material/text_fields:", default=True),
    st.Page(HERE / "pages" / "signatures.py", title="Signatures", icon=":material/grid_on:"),
    st.Page(HERE / "pages" / "groups.py", title="Groups", icon=":material/bubble_chart:"),
    st.Page(HERE / "pages" / "compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page(HERE / "pages" / "sweep.py", title="Sweep", icon=":material/show_chart:"),
]

st.set_page_config(page_title="KVCrush Explorer", page_icon=str(HERE / "assets" / "icon.svg"), layout="wide")
st.logo(str(HERE / "assets" / "logo.svg"), size="large")
page = st.navigation(PAGES)
shell.build()
page.run()
