"""Rerank jobs through the serving worker (real Redis, in-process BatchWorkers, a tiny random
cross-encoder on torch CPU): a job's texts are the documents and its options carry the query; its
result is one score per document, in document order, equal to `CrossEncoder.predict` on the same
pairs.  A job of the wrong kind (a query on an embedding model, none on a reranker) fails alone
with one line while its batch-mates finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import UnknownBackend
from vecq.engines.random_model import write_random_cross_encoder
from vecq.engines.reranker import Reranker
from vecq.producer import Client, JobFailed
from vecq.producer.keys import queue_name
from vecq.worker.settings import WorkerSettings

from .conftest import enqueue, run

pytestmark = pytest.mark.timeout(60)

DOCUMENTS = [
    "Paris is the capital of France.",
    "A cat sat on the mat.",
    "北京是中国的首都。",
    "Pizza 🍕 is best eaten hot. " * 30,  # over the model's 128 tokens: the pair is cut
    "The Eiffel Tower is in Paris.",
]
QUERIES = ["where is the Eiffel Tower?", "what is the capital of China? " * 10]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_cross_encoder(tmp_path_factory.mktemp("reranker") / "bert")


def _reason(client: Client, job_id: str) -> str:
    with pytest.raises(JobFailed) as exc:
        client.result(job_id, timeout=5)
    return exc.value.reason


@pytest.mark.parametrize("processes", [0, 1], ids=["worker-thread", "tokenizer-process"])
def test_rerank_jobs_score_like_cross_encoder_and_a_job_without_query_fails_alone(
    redis_url: str, redis_conn, make_worker, reranker_dir: Path, processes: int
) -> None:  # type: ignore[no-untyped-def]
    """Pairs tokenized on the worker's thread or in a tokenizer process (a GPU worker's default)
    score alike: the child is handed each job's query with its texts."""
    from sentence_transformers import CrossEncoder

    worker = make_worker(model=reranker_dir, backend="torch", max_wait_ms=20, tokenize_processes=processes)
    assert isinstance(worker.embedder, Reranker)  # detected: a reranker
    queue = queue_name(worker.model, "interactive")
    jobs = [enqueue(redis_conn, [DOCUMENTS], queue=queue, model=worker.model, query=q)[0] for q in QUERIES]
    (plain,) = enqueue(redis_conn, [DOCUMENTS[:2]], queue=queue, model=worker.model, retries=None)
    (prompted,) = enqueue(
        redis_conn, [DOCUMENTS[:2]], queue=queue, model=worker.model, query="q", prompt="x: ", retries=None
    )
    run(worker, timeout=45)
    reference = CrossEncoder(str(reranker_dir), device="cpu")
    with Client(redis_url) as client:
        for job, q in zip(jobs, QUERIES, strict=True):
            got = client.result(job.id, timeout=5)
            want = reference.predict([(q, d) for d in DOCUMENTS], show_progress_bar=False)
            assert got.shape == (len(DOCUMENTS), 1) and got.dtype == np.float32
            np.testing.assert_allclose(got[:, 0], want, atol=1e-5)
        assert _reason(client, plain.id) == (
            "BadRequest: query: missing; this model is a reranker (a job's options carry the query)"
        )
        assert _reason(client, prompted.id) == "BadRequest: prompt: a rerank job takes no prompt"


def test_rerank_job_on_an_embedding_worker_fails_alone(redis_url: str, redis_conn, make_worker) -> None:  # type: ignore[no-untyped-def]
    (embed,) = enqueue(redis_conn, [["one", "two"]])
    (rerank,) = enqueue(redis_conn, [["one", "two"]], query="which one?", retries=None)
    run(make_worker(), timeout=30)
    with Client(redis_url) as client:
        assert client.result(embed.id, timeout=5).shape == (2, 384)
        assert _reason(client, rerank.id) == (
            "BadRequest: query: this model embeds texts; a rerank job needs a cross-encoder model"
        )


def test_a_reranker_refuses_what_it_cannot_run_at_start(redis_url: str, reranker_dir: Path) -> None:
    with pytest.raises(UnknownBackend, match=r"^backend 'onnx' on cuda: a reranker runs on CUDA with torch$"):
        WorkerSettings(redis_url=redis_url, model=reranker_dir, device="cuda", backend="onnx").load_embedder()
    with pytest.raises(UnknownBackend, match=r"^precision 'fp16' on cpu: a reranker runs fp32 there$"):
        Reranker.load(reranker_dir, precision="fp16")
    with pytest.raises(UnknownBackend, match=r"^device 'mps': a reranker runs on cpu or cuda$"):
        Reranker.load(reranker_dir, device="mps")


def test_a_worker_serves_a_reranker_bundle(
    redis_url: str, redis_conn, make_worker, reranker_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`vecq worker --bundle` of a cross-encoder's bundle (`vecq build`) serves rerank jobs."""
    from sentence_transformers import CrossEncoder

    from vecq.engines.build import build_bundle

    bundle = tmp_path / "reranker-bundle"
    build_bundle(reranker_dir, bundle, name="reranker-bundle")
    worker = make_worker(bundle=bundle, backend=None, max_wait_ms=20)
    assert isinstance(worker.embedder, Reranker) and worker.model == "reranker-bundle"
    queue = queue_name(worker.model, "interactive")
    (job,) = enqueue(redis_conn, [DOCUMENTS], queue=queue, model=worker.model, query=QUERIES[0])
    run(worker, timeout=45)
    want = CrossEncoder(str(reranker_dir), device="cpu").predict([(QUERIES[0], d) for d in DOCUMENTS])
    with Client(redis_url) as client:
        np.testing.assert_allclose(client.result(job.id, timeout=5)[:, 0], want, atol=1e-4)
