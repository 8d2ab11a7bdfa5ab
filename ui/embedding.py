"""2-D maps of binary signatures: UMAP (umap-learn, Hamming metric) or PCA (torch), cached.

Signatures have few distinct values (at most 2**H), so the map is fitted on the distinct rows and
identical signatures get a small deterministic jitter around their shared point, which keeps the
fit fast and shows how many tokens share a signature. umap-learn's first import compiles with numba
(about 20 s in a fresh environment), and its first fit in a process takes seconds: callers show a
spinner and the result is cached per signature matrix.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import streamlit as st
import torch

METHODS = ("UMAP", "PCA")
PROJECTION_ENV = "KVCRUSH_APP_PROJECTION"
MIN_UMAP_POINTS = 8


def default_method() -> str:
    """UMAP unless KVCRUSH_APP_PROJECTION=pca (the fast test suite sets it)."""
    return "PCA" if os.environ.get(PROJECTION_ENV, "").strip().lower() == "pca" else "UMAP"


def pca(points: np.ndarray) -> np.ndarray:
    data = torch.as_tensor(points, dtype=torch.float32)
    data = data - data.mean(dim=0, keepdim=True)
    if data.shape[0] < 2 or float(data.abs().sum()) == 0.0:
        return np.zeros((points.shape[0], 2))
    _, _, v = torch.linalg.svd(data, full_matrices=False)
    coords = (data @ v[:2].T).numpy()
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def umap_fit(points: np.ndarray, seed: int) -> np.ndarray:
    import umap  # heavy first import: numba compiles its kernels

    n = points.shape[0]
    reducer = umap.UMAP(n_components=2, metric="hamming", n_neighbors=max(2, min(15, n - 1)), min_dist=0.3,
                        random_state=seed, init="spectral" if n > 30 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(reducer.fit_transform(points.astype(bool)))


def _jitter(coords: np.ndarray, inverse: np.ndarray, seed: int) -> np.ndarray:
    spread = float(np.ptp(coords, axis=0).max()) if len(coords) > 1 else 1.0
    rng = np.random.default_rng(seed)
    points = coords[inverse]
    return points + rng.normal(scale=0.015 * (spread or 1.0), size=points.shape)


@st.cache_data(show_spinner=False, max_entries=32)
def project(bits: bytes, n_rows: int, n_cols: int, method: str, seed: int = 0) -> tuple[np.ndarray, str, str]:
    """(coords `[n_rows, 2]`, method actually used, note). Keyed by the signature bytes."""
    matrix = np.frombuffer(bits, dtype=np.uint8).reshape(n_rows, n_cols)
    unique, inverse = np.unique(matrix, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    note = f"{n_rows:,} units, {len(unique):,} distinct signatures"
    used = method
    if method == "UMAP" and len(unique) < MIN_UMAP_POINTS:
        used, note = "PCA", note + " (too few distinct signatures for UMAP: PCA instead)"
    if used == "UMAP":
        try:
            coords = umap_fit(unique, seed)
        except (ImportError, ValueError, RuntimeError, TypeError) as error:
            used, note = "PCA", note + f" (UMAP failed: {error}; PCA instead)"
            coords = pca(unique)
    else:
        coords = pca(unique)
    return _jitter(coords, inverse, seed), used, note


def embed(view_bits: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, str, str]:
    data = np.ascontiguousarray(view_bits, dtype=np.uint8)
    return project(data.tobytes(), data.shape[0], data.shape[1], method, seed)
