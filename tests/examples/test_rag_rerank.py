"""examples/rag_faiss.py --rerank: FAISS's candidates reranked by vecq, in the script's process
(`Reranker`) and through real `vecq worker` processes (`--redis`: `Client.rerank`).

The corpus vectors come from `vecq embed` with the real default model; the reranker is a tiny
random cross-encoder, which cannot find the topic, so the reference is
`sentence_transformers.CrossEncoder.predict` on the same candidates (the ones the script prints
without `--rerank`): the script must print them in that order, with those scores.  A random
head's scores differ by ~1e-5 between documents, so its classifier weights are scaled by 1e4
(Identity activation: the scores are the logits, ~0.1 apart) for 4 printed decimals to tell
them apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from vecq.engines.random_model import write_random_cross_encoder
from vecq.producer.keys import finished_key, queue_name
from vecq.worker.status import health

from ..worker.servers import VECQ, spawn_worker, stop_process, until
from .test_examples import CORPUS, EXAMPLES, hits, run

QUERY = "how do I keep tomato plants healthy?"
IDENTITY = "torch.nn.modules.linear.Identity"
RERANKER = "tiny-reranker"  # the name `vecq worker --model .../tiny_Reranker` serves it under
MODELS = {"all-minilm-l6-v2", RERANKER}  # the query's embedder (the default model) and the reranker


def rag(vectors: Path, *flags: str) -> str:
    """`python examples/rag_faiss.py VECTORS QUERY FLAGS...`'s output."""
    script = str(EXAMPLES / "rag_faiss.py")
    return run(sys.executable, script, str(vectors), QUERY, *flags, cwd=vectors.parent)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rag") / "vectors.parquet"
    run(*VECQ, "embed", str(CORPUS), "--id-field", "id", "--out", str(out), cwd=out.parent)
    return out


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("rerankers") / "tiny_Reranker"
    write_random_cross_encoder(root, activation=IDENTITY, seed=3)
    weights = load_file(root / "model.safetensors")
    weights["classifier.weight"] *= 1e4
    save_file(weights, root / "model.safetensors", metadata={"format": "pt"})
    return root


@pytest.fixture(scope="module")
def candidates(vectors: Path) -> dict[str, str]:
    """id → text of FAISS's 20 nearest (the default `--candidates`), nearest first."""
    return {id_: text for _, id_, text in hits(rag(vectors, "-k", "20"))}


@pytest.fixture(scope="module")
def reference(reranker_dir: Path, candidates: dict[str, str]) -> dict[str, float]:
    """id → `CrossEncoder.predict`'s score of (QUERY, text), for every candidate."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device="cpu")
    scores = model.predict([(QUERY, text) for text in candidates.values()], show_progress_bar=False)
    assert len(scores) == 20 and np.diff(np.sort(scores)).min() > 5e-4, "near ties: choose another seed"
    return dict(zip(candidates, map(float, scores), strict=True))


@pytest.fixture(scope="module")
def in_process(vectors: Path, reranker_dir: Path) -> str:
    return rag(vectors, "--rerank", str(reranker_dir), "-k", "5")


def assert_reranked(out: str, among: dict[str, str], reference: dict[str, float], k: int) -> list[str]:
    """`out` is the k of `among` that score best by `reference`, best first, with their scores
    and texts; the printed ids."""
    want = sorted(among, key=lambda id_: -reference[id_])[:k]
    got = hits(out)
    assert [id_ for _, id_, _ in got] == want, (got, want)
    assert [text for _, _, text in got] == [among[id_] for id_ in want]
    np.testing.assert_allclose([s for s, _, _ in got], [reference[id_] for id_ in want], atol=2e-4)
    return want


def test_rerank_in_process_orders_faiss_candidates_by_cross_encoder(
    vectors: Path,
    reranker_dir: Path,
    candidates: dict[str, str],
    reference: dict[str, float],
    in_process: str,
) -> None:
    best = assert_reranked(in_process, candidates, reference, k=5)
    assert best != list(candidates)[:5]  # the cross-encoder's order, not FAISS's

    out = rag(vectors, "--rerank", str(reranker_dir), "--candidates", "6", "-k", "10")
    nearest = dict(list(candidates.items())[:6])
    assert sorted(assert_reranked(out, nearest, reference, k=10)) == sorted(nearest)  # all 6, reordered


def test_rerank_through_workers_prints_what_in_process_prints(
    redis_url: str,
    tmp_path: Path,
    vectors: Path,
    reranker_dir: Path,
    candidates: dict[str, str],
    reference: dict[str, float],
    in_process: str,
) -> None:
    """`--redis`: the query embedded by a default-model worker (ONNX, as in-process), the
    candidates reranked by a worker serving the cross-encoder under its dir's name (torch)."""
    workers = [
        spawn_worker(redis_url, tmp_path / "embedder.log", "--backend", "onnx"),
        spawn_worker(redis_url, tmp_path / "rerank.log", "--model", str(reranker_dir), "--backend", "torch"),
    ]
    conn = redis.Redis.from_url(redis_url)
    try:
        until(lambda: _served(conn, workers, tmp_path) >= MODELS, 90, "both workers' health records")
        out = rag(vectors, "--rerank", str(reranker_dir), "-k", "5", "--redis", redis_url)
        finished = {m: conn.zcard(finished_key(queue_name(m, "interactive"))) for m in MODELS}
    finally:
        for proc in workers:
            stop_process(proc)
        conn.close()
    assert finished == dict.fromkeys(MODELS, 1)  # the query's job and the rerank job, by the workers
    assert assert_reranked(out, candidates, reference, k=5) == [id_ for _, id_, _ in hits(in_process)]
    np.testing.assert_allclose([s for s, _, _ in hits(out)], [s for s, _, _ in hits(in_process)], atol=2e-4)


def _served(conn: redis.Redis, workers: list[subprocess.Popen[bytes]], logs: Path) -> set[str]:
    """The models live workers advertise; fails the test if a worker exited."""
    for proc in workers:
        if proc.poll() is not None:
            tails = {log.name: log.read_text()[-1500:] for log in logs.glob("*.log")}
            pytest.fail(f"a worker exited ({proc.returncode}): {tails}")
    return {record.get("model") for record in health(conn).values()}
