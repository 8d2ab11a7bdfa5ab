"""What app.py does before the chosen page runs: the shared sidebar, the model, the config.

Pages call `page.context()`, which normally finds the config app.py just built. Streamlit's legacy
"pages/ folder" mode can run a page file directly (the first request of a fresh server process on a
page's URL); then the page builds the sidebar itself through `build()`, so it still works.
"""

from __future__ import annotations

import streamlit as st

import kvcrush
from kvcrush.errors import KVCrushError
from ui import model as model_ui
from ui import session_prompt, sidebar
from ui.state import AppConfig, set_config

BUILT_THIS_RUN = "_shell_built"


def build() -> tuple[AppConfig, kvcrush.LoadedModel]:
    """Render the sidebar, load the model (cached per process) and store this rerun's config."""
    slots = sidebar.layout()
    choice = sidebar.model_section(slots)
    try:
        lm = model_ui.get_model(choice)
    except KVCrushError as error:
        session_prompt.release()  # it belongs to the model the sidebar no longer names
        st.error(f"The model could not be loaded: {error}")
        st.info("Clear the model box in the sidebar's **Model** section to use the packaged SmolLM2-135M-Instruct.")
        st.stop()
    config = sidebar.render(slots, choice, lm)
    model_ui.freeze_long_lived(choice)  # after the first run's model and examples exist
    session_prompt.release_stale(config.prompt_key)  # a new prompt, question, mode or model frees the old prefill
    set_config(config)
    st.session_state[BUILT_THIS_RUN] = True
    return config, lm


def take() -> tuple[AppConfig, kvcrush.LoadedModel]:
    """The config app.py built in this rerun, or build it now (a page run on its own)."""
    if st.session_state.pop(BUILT_THIS_RUN, False):
        config = st.session_state["_config"]
        return config, model_ui.loaded(config.model)
    return build()
