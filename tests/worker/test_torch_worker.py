"""The worker with the real default model (all-MiniLM-L6-v2, torch backend, CPU) equals `Embedder.embed`.

The null-engine tests prove the plumbing; this one proves that batching across jobs -- texts
of different jobs padded together into the planner's shapes -- does not change a real model's
vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from vecq.engines import Embedder

from .conftest import BULK, enqueue, run, vectors_of

pytest.importorskip("torch")  # skipped only where torch itself is not installed


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    """With torch installed, vecq's torch backend must import and load: a broken import is an
    error of this test, never a skip."""
    from vecq.engines.backends.torch import TorchEngine

    embedder = Embedder.load(backend="torch")
    assert isinstance(embedder.engine, TorchEngine), type(embedder.engine)
    return embedder


def test_worker_vectors_equal_embedder_embed(redis_conn, make_worker, torch_embedder) -> None:
    sentence = "the quick brown fox jumps over a lazy dog while vecq batches many short texts"
    words = sentence.split(" ")
    texts = [" ".join(words[: 1 + i % len(words)] * (1 + i % 4)) + f" #{i}" for i in range(50)]
    texts[7] = "naïve café — 中文 text, emoji 🙂, and punctuation!?"
    texts[31] = "long " * 400  # truncated at the model's max length, like sentence-transformers
    sizes = [1, 2, 3, 5, 8, 13, 18]  # 50 texts in 7 jobs of different sizes, on both lanes
    jobs, start = [], 0
    for n, size in enumerate(sizes):
        chunk = [texts[start : start + size]]
        jobs += enqueue(redis_conn, chunk, queue=BULK, lane="bulk") if n % 2 else enqueue(redis_conn, chunk)
        start += size
    assert start == len(texts)

    run(make_worker(embedder=torch_embedder, max_wait_ms=20), timeout=300)

    got = np.concatenate([vectors_of(redis_conn, job.id) for job in jobs])
    want = torch_embedder.embed(texts)
    assert got.shape == want.shape == (50, torch_embedder.dim) and got.dtype == np.float32
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.99999, f"worst text {int(cos.argmin())}: cosine {cos.min():.7f}"
