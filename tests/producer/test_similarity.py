"""similarity(): cosine along the last axis, the write-up's predict_sim."""

from __future__ import annotations

import numpy as np
import pytest

from vecq.producer import similarity


def test_two_vectors_give_a_float() -> None:
    score = similarity(np.array([1.0, 0.0], np.float32), np.array([1.0, 1.0], np.float32))
    assert isinstance(score, float)
    assert score == pytest.approx(1 / np.sqrt(2), abs=1e-12)
    assert similarity(np.array([1.0, 2.0]), np.array([-1.0, -2.0])) == pytest.approx(-1.0, abs=1e-12)


def test_rows_and_all_pairs() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(similarity(a, b[0]), [1.0, 0.0, 0.6], atol=1e-7)
    np.testing.assert_allclose(similarity(a[:2], b), [1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(similarity(a[:, None], b[None]), [[1, 0], [0, 1], [0.6, 0.8]], atol=1e-7)


def test_zero_vector_scores_zero_and_sizes_must_match() -> None:
    assert similarity(np.zeros(3), np.ones(3)) == 0.0
    with pytest.raises(ValueError, match=r"^similarity: vector sizes differ \(\(3,\) vs \(4,\)\)$"):
        similarity(np.ones(3), np.ones(4))


def test_embeddings_of_the_same_text_score_one(null_embedder) -> None:  # type: ignore[no-untyped-def]
    v = null_embedder.embed(["same text", "same text", "other"])
    assert similarity(v[0], v[1]) == pytest.approx(1.0, abs=1e-6)
    assert similarity(v[0], v[2]) < 0.999
