"""The Groups page's 2-D map of signatures (`kvcrush.explain.projection`), cached per signature matrix.

The fit is the library's; this module picks the default method and keeps results in Streamlit's cache,
keyed by the matrix's bytes, so a rerun redraws without fitting again.
"""

from __future__ import annotations

import os

import numpy as np
import streamlit as st

from kvcrush.explain.projection import METHODS, project_signatures

PROJECTION_ENV = "KVCRUSH_APP_PROJECTION"


def default_method() -> str:
    """UMAP unless KVCRUSH_APP_PROJECTION=pca (the fast test suite sets it)."""
    return "PCA" if os.environ.get(PROJECTION_ENV, "").strip().lower() == "pca" else "UMAP"


@st.cache_data(show_spinner=False, max_entries=32)
def project(bits: bytes, n_rows: int, n_cols: int, method: str, seed: int = 0) -> tuple[np.ndarray, str, str]:
    """(coords `[n_rows, 2]`, method actually used, note). Keyed by the signature bytes."""
    return project_signatures(np.frombuffer(bits, dtype=np.uint8).reshape(n_rows, n_cols), method, seed)


def embed(view_bits: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, str, str]:
    data = np.ascontiguousarray(view_bits, dtype=np.uint8)
    return project(data.tobytes(), data.shape[0], data.shape[1], method, seed)


__all__ = ["METHODS", "PROJECTION_ENV", "default_method", "project", "embed"]
