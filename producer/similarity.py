"""Cosine similarity of embeddings: the SimCSE write-up's `predict_sim`, without torch."""

from __future__ import annotations

import numpy as np

#: Norms are clamped to this (as torch's cosine_similarity does), so a zero vector scores 0.
EPS = 1e-8


def similarity(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Cosine similarity along the last axis, broadcasting like numpy.

    Two vectors give a float; (n, d) with (d,) or (n, d) gives n scores (row by row); for every
    pair of two sets use `similarity(a[:, None], b[None])`, an (n, m) matrix.  Computed in
    float64, so scores of normalized float32 vectors are exact to float32 precision.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape[-1:] != y.shape[-1:]:
        raise ValueError(f"similarity: vector sizes differ ({x.shape[-1:]} vs {y.shape[-1:]})")
    dot = (x * y).sum(axis=-1)
    norms = np.maximum(np.linalg.norm(x, axis=-1), EPS) * np.maximum(np.linalg.norm(y, axis=-1), EPS)
    out = dot / norms
    return float(out) if np.ndim(out) == 0 else out
