"""2-D maps of binary signatures (`[units, bits]`): UMAP with the Hamming metric, or PCA.

Signatures have few distinct values (at most 2**H), so the map is fitted on the distinct rows and
identical signatures get a small deterministic jitter around their shared point, which keeps the fit
fast and shows how many units share a signature.

- UMAP: McInnes, Healy and Melville, "UMAP: Uniform Manifold Approximation and Projection for Dimension
  Reduction" (2018), through umap-learn. Its first import compiles with numba (about 20 s in a fresh
  environment) and its first fit in a process takes seconds: callers cache results and show a spinner.
- PCA: the rows centred, projected on the first two right singular vectors (`numpy.linalg.svd`).
"""

from __future__ import annotations

import warnings

import numpy as np

METHODS = ("UMAP", "PCA")
MIN_UMAP_POINTS = 8  # fewer distinct signatures than this: PCA (UMAP needs neighbours to fit)


def pca(points: np.ndarray) -> np.ndarray:
    """`[n, 2]` coordinates of the rows of `points` on their two principal axes (zeros without any spread)."""
    data = np.asarray(points, dtype=np.float64)
    data = data - data.mean(axis=0, keepdims=True)
    if data.shape[0] < 2 or not np.abs(data).sum():
        return np.zeros((data.shape[0], 2))
    _, _, vt = np.linalg.svd(data, full_matrices=False)
    coords = data @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def umap_fit(points: np.ndarray, seed: int) -> np.ndarray:
    """`[n, 2]` UMAP coordinates of boolean rows under the Hamming metric."""
    import umap  # heavy first import: numba compiles its kernels

    n = points.shape[0]
    reducer = umap.UMAP(n_components=2, metric="hamming", n_neighbors=max(2, min(15, n - 1)), min_dist=0.3,
                        random_state=seed, init="spectral" if n > 30 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(reducer.fit_transform(points.astype(bool)))


def _jitter(coords: np.ndarray, inverse: np.ndarray, seed: int) -> np.ndarray:
    """Each row's distinct signature's point, moved by a small seeded offset (1.5% of the map's spread)."""
    spread = float(np.ptp(coords, axis=0).max()) if len(coords) > 1 else 1.0
    rng = np.random.default_rng(seed)
    points = coords[inverse]
    return points + rng.normal(scale=0.015 * (spread or 1.0), size=points.shape)


def project_signatures(matrix: np.ndarray, method: str, seed: int = 0) -> tuple[np.ndarray, str, str]:
    """(coords `[units, 2]`, the method actually used, a note) for a `[units, bits]` 0/1 matrix.

    UMAP falls back to PCA, saying so in the note, when there are too few distinct signatures or it fails.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown projection {method!r}; choose one of {', '.join(METHODS)}.")
    unique, inverse = np.unique(np.asarray(matrix, dtype=np.uint8), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    note = f"{len(inverse):,} units, {len(unique):,} distinct signatures"
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


__all__ = ["METHODS", "MIN_UMAP_POINTS", "pca", "umap_fit", "project_signatures"]
