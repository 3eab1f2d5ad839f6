"""No request ever triggers a rebuild or re-warm: a CPU worker builds its engine (one ORT
session, or one torch model load) and warms it once, at start; jobs of every size and length,
on both lanes, then run on declared shapes only, with no further build or warm-up.

The counts come from spies on the engine classes' own methods (each calls the real one):
`warmup`, `run` (the shape of every batch), and what building means for the backend:
constructing an `onnxruntime.InferenceSession`, or `load_pooled` (the torch model load).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis

from vecq.engines import Embedder
from vecq.engines.backends.onnx import OnnxEngine
from vecq.engines.backends.torch import TorchEngine
from vecq.engines.parity import cosines
from vecq.producer.keys import queue_name

from .conftest import enqueue, run, vectors_of

pytestmark = pytest.mark.timeout(180)


class Counts:
    def __init__(self) -> None:
        self.builds = 0
        self.warmups = 0
        self.shapes: Counter[tuple[int, int]] = Counter()


def _spy(monkeypatch: pytest.MonkeyPatch, backend: str) -> Counts:
    counts = Counts()
    cls = {"onnx": OnnxEngine, "torch": TorchEngine}[backend]
    warmup, run_batch = cls.warmup, cls.run

    def counted_warmup(self) -> None:
        counts.warmups += 1
        warmup(self)

    def counted_run(self, batch):
        counts.shapes[(batch.shape.batch, batch.shape.seq_len)] += 1
        return run_batch(self, batch)

    monkeypatch.setattr(cls, "warmup", counted_warmup)
    monkeypatch.setattr(cls, "run", counted_run)
    if backend == "onnx":
        import onnxruntime as ort

        class CountedSession(ort.InferenceSession):
            def __init__(self, *args, **kwargs) -> None:
                counts.builds += 1
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(ort, "InferenceSession", CountedSession)
    else:
        from vecq.engines import pooled

        load = pooled.load_pooled

        def counted_load(*args, **kwargs):
            counts.builds += 1
            return load(*args, **kwargs)

        monkeypatch.setattr(pooled, "load_pooled", counted_load)
    return counts


def _varied_jobs(rng: np.random.Generator) -> list[list[str]]:
    """Jobs of 1 to 40 texts of 1 to 200 characters (over the model's 128 positions: truncated)."""
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    sizes = [1, 40, 3, 17, 1, 8, 25, 2, 9, 33, 1, 5]
    return [
        ["".join(rng.choice(chars, size=int(rng.choice([1, 4, 30, 90, 200])))) for _ in range(n)]
        for n in sizes
    ]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_cpu_worker_builds_and_warms_once_whatever_the_jobs(
    backend: str,
    tiny_bert_dir: Path,
    redis_conn: redis.Redis,
    make_worker,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("VECQ_CACHE_DIR", str(tmp_path / "cache"))
    if backend == "onnx":  # the bundle a model dir is served from, built (and checked) once
        Embedder.load(tiny_bert_dir, backend=backend).close()
    counts = _spy(monkeypatch, backend)
    embedder = Embedder.load(tiny_bert_dir, backend=backend)
    assert (counts.builds, counts.warmups) == (1, 0)
    rng = np.random.default_rng(3)
    first, second = _varied_jobs(rng), _varied_jobs(rng)
    name = embedder.spec.name
    jobs = [
        *enqueue(redis_conn, first, queue=queue_name(name, "interactive"), model=name),
        *enqueue(redis_conn, second, queue=queue_name(name, "bulk"), model=name),
    ]
    run(make_worker(embedder), timeout=120)

    assert (counts.builds, counts.warmups) == (1, 1), "a build or warm-up after start"
    served = set(counts.shapes)
    declared = {(s.batch, s.seq_len) for s in embedder.shapes}
    assert served <= declared, f"undeclared shapes {served - declared}"
    assert len(served) >= 8, f"the jobs met only shapes {sorted(served)}"
    assert {b for b, _ in served} >= {1, 8} and max(L for _, L in served) == embedder.spec.max_seq_len

    got = np.concatenate([vectors_of(redis_conn, job.id) for job in jobs])
    want = Embedder.load(tiny_bert_dir, backend="torch").embed([t for texts in first + second for t in texts])
    assert got.shape == want.shape and cosines(got, want).min() >= 0.9999
