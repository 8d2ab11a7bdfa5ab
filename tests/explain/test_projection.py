"""Signature maps: PCA on distinct rows with jitter, and UMAP's fallback (umap itself is exercised by the app tests)."""

from __future__ import annotations

import numpy as np
import pytest

from kvcrush.explain.projection import pca, project_signatures


def test_pca_keeps_the_two_directions_of_largest_spread():
    rng = np.random.default_rng(0)
    points = np.zeros((200, 5))
    points[:, 1] = rng.normal(scale=10, size=200)
    points[:, 3] = rng.normal(scale=3, size=200)
    points[:, 4] = rng.normal(scale=0.1, size=200)
    coords = pca(points)
    assert coords.shape == (200, 2)
    assert abs(np.corrcoef(coords[:, 0], points[:, 1])[0, 1]) > 0.99
    assert abs(np.corrcoef(coords[:, 1], points[:, 3])[0, 1]) > 0.99
    assert coords[:, 0].var() > coords[:, 1].var()


def test_pca_of_identical_rows_is_the_origin():
    assert np.array_equal(pca(np.ones((4, 3))), np.zeros((4, 2)))
    assert pca(np.ones((1, 3))).shape == (1, 2)


def test_identical_signatures_share_a_point_up_to_a_small_jitter():
    matrix = np.array([[1, 0, 1, 0]] * 30 + [[0, 1, 0, 1]] * 30, dtype=np.uint8)
    coords, used, note = project_signatures(matrix, "PCA", seed=3)
    assert used == "PCA" and note.startswith("60 units, 2 distinct signatures")
    first, second = coords[:30], coords[30:]
    spread = np.linalg.norm(first.mean(axis=0) - second.mean(axis=0))
    assert first.std(axis=0).max() < 0.05 * spread and second.std(axis=0).max() < 0.05 * spread
    again, _, _ = project_signatures(matrix, "PCA", seed=3)
    assert np.array_equal(coords, again)  # seeded


def test_umap_falls_back_to_pca_with_few_distinct_signatures():
    matrix = np.array([[1, 0], [0, 1], [1, 1]] * 5, dtype=np.uint8)
    coords, used, note = project_signatures(matrix, "UMAP")
    assert used == "PCA" and "too few distinct signatures for UMAP" in note and coords.shape == (15, 2)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="Unknown projection 'tsne'"):
        project_signatures(np.zeros((3, 2)), "tsne")
