"""`Client.rerank` / `AsyncClient.rerank` against a real `vecq worker --model DIR` serving a tiny
random cross-encoder (torch CPU, real Redis): the ranking is `CrossEncoder.predict`'s scores of
the same pairs (within 1e-5), best first, cut to `top_n`; bad requests are refused in one line
before anything reaches Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from vecq.engines.random_model import write_random_cross_encoder
from vecq.producer import AsyncClient, BadRequest, Client, RerankResult

from ..worker.servers import until

pytestmark = pytest.mark.timeout(90)

MODEL = "reranker"
QUERY = "where is the Eiffel Tower?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "A cat sat on the mat.",
    "北京是中国的首都。",
    "The Eiffel Tower is in Paris.",
    "Pizza 🍕 is best eaten hot. " * 30,  # over the model's 128 tokens: the pair is cut
    "Towers of steel.",
]


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_cross_encoder(tmp_path_factory.mktemp("reranker") / "bert", seed=3)


@pytest.fixture(scope="module")
def reference(reranker_dir: Path) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device="cpu")
    return model.predict([(QUERY, d) for d in DOCUMENTS], show_progress_bar=False)


def _expected(scores: np.ndarray, top_n: int | None) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]


def test_rerank_ranks_like_cross_encoder(redis_url: str, start_worker, reranker_dir: Path, reference) -> None:  # type: ignore[no-untyped-def]
    start_worker(redis_url, "--model", str(reranker_dir), "--backend", "torch", "--name", MODEL)
    with Client(redis_url) as client:
        full = client.rerank(QUERY, DOCUMENTS, model=MODEL, timeout=60)
        top = client.rerank(QUERY, DOCUMENTS, model=MODEL, top_n=2)
    assert all(isinstance(r, RerankResult) for r in full)
    assert [r.index for r in full] == _expected(reference, None)
    np.testing.assert_allclose([r.score for r in full], reference[[r.index for r in full]], atol=1e-5)
    assert [r.score for r in full] == sorted((r.score for r in full), reverse=True)
    assert top == full[:2]

    async def both() -> list[list[RerankResult]]:
        async with AsyncClient(redis_url) as aclient:
            return list(
                await asyncio.gather(
                    aclient.rerank(QUERY, DOCUMENTS, model=MODEL, top_n=3),
                    aclient.rerank(QUERY, DOCUMENTS[::-1], model=MODEL),
                )
            )

    atop, reverse = asyncio.run(both())
    assert atop == full[:3]
    n = len(DOCUMENTS)
    assert [(n - 1 - r.index) for r in reverse] == [r.index for r in full]


def test_bad_rerank_requests_are_refused_in_one_line(redis_url: str, redis_conn: redis.Redis) -> None:
    with Client(redis_url) as client:
        cases = [
            (("q", []), {}, "documents: empty list (send at least one document)"),
            (("q", ["a", 3]), {}, "documents[1]: expected str, got int"),
            (("q", ["a"]), {"top_n": 0}, "top_n: expected an int >= 1 or None, got 0"),
            ((5, ["a"]), {}, "query: Input should be a valid string"),
            (("", ["a"]), {}, "query: String should have at least 1 character"),
        ]
        for args, kwargs, message in cases:
            with pytest.raises(BadRequest) as exc:
                client.rerank(*args, model=MODEL, **kwargs)  # type: ignore[arg-type]
            assert str(exc.value) == message
    assert redis_conn.dbsize() == 0


def _pair_tokens(model_dir: Path) -> int:
    """What the worker reads for DOCUMENTS' pairs: `CrossEncoder`'s own tokenizer, cut as it cuts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, truncation=True, max_length=128)
    return sum(len(ids) for ids in encoded["input_ids"])


def test_gateway_rerank_route(
    redis_url: str, start_worker, start_gateway, reranker_dir: Path, reference
) -> None:  # type: ignore[no-untyped-def]
    start_worker(redis_url, "--model", str(reranker_dir), "--backend", "torch", "--name", MODEL)
    gateway = start_gateway(redis_url, "--api-key", "secret", "--tokenizer", f"{MODEL}={reranker_dir}")
    auth = {"Authorization": "Bearer secret"}
    body = {"model": MODEL, "query": QUERY, "documents": DOCUMENTS, "top_n": 3, "return_documents": True}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        listed = lambda: MODEL in {m["id"] for m in http.get("/v1/models", headers=auth).json()["data"]}  # noqa: E731
        until(listed, 30, "the reranker worker in /v1/models")
        refused = http.post("/v1/rerank", json=body)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        answer = http.post("/v1/rerank", json=body, headers=auth)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        best = _expected(reference, 3)
        assert got["object"] == "list" and got["model"] == MODEL
        tokens = _pair_tokens(reranker_dir)
        assert got["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert [r["index"] for r in got["results"]] == best
        assert [r["document"] for r in got["results"]] == [{"text": DOCUMENTS[i]} for i in best]
        np.testing.assert_allclose([r["relevance_score"] for r in got["results"]], reference[best], atol=1e-5)
        bare = http.post(
            "/v1/rerank", json={"model": MODEL, "query": QUERY, "documents": DOCUMENTS}, headers=auth
        )
        assert [set(r) for r in bare.json()["results"]] == [{"index", "relevance_score"}] * len(DOCUMENTS)
        cases = [
            ({"documents": []}, 400, "documents: empty list (send at least one document)"),
            ({"top_n": 0}, 400, "top_n: expected an int >= 1 or None, got 0"),
            ({"query": 3}, 400, "query: Input should be a valid string"),
            ({"return_documents": "yes"}, 400, "return_documents: expected a bool, got str"),
            ({"model": "elsewhere"}, 404, "model: 'elsewhere' is not served here; GET /v1/models lists "
             "those that are"),
        ]  # fmt: skip
        for change, status, message in cases:
            answer = http.post("/v1/rerank", json={**body, **change}, headers=auth)
            assert answer.status_code == status, (change, answer.text)
            assert answer.json()["error"]["message"] == message
