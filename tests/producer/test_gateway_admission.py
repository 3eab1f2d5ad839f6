"""The gateway's queued-texts limit (issue 15): sized from the workers' measured rate, an
explicit `--max-queued-texts` over it, a floor when nothing is measured, and a 429 in OpenAI's
shape that writes nothing.

Real `vecq gateway` processes on the test's Redis database.  The worker's own record is a real
`vecq worker`'s in one test; the others write health records as workers write them
(`vecq:health:<name>`, JSON with an expiry), so the rates -- and the limits -- are exact.
"""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import redis

from vecq.producer import Client
from vecq.producer.gateway import GatewaySettings
from vecq.producer.gateway.admission import HEADROOM, sized_limit
from vecq.producer.keys import queue_name, queued_texts_key

from ..worker.servers import until

MODEL = "all-minilm-l6-v2"


def advertise(conn: redis.Redis, worker: str, model: str, rate: float | None, **fields: object) -> None:
    """A health record like `BatchWorker._health` writes, alive for 60 s."""
    record = {"worker": worker, "model": model, "capacity_texts_per_s": rate, "stopping": False, **fields}
    conn.set(f"vecq:health:{worker}", json.dumps(record), ex=60)


def limits(gateway) -> dict[str, int]:  # type: ignore[no-untyped-def]
    answer = httpx.get(f"{gateway.url}/health", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["queued_texts_limit"]


def test_the_limit_follows_the_workers_records_above_the_floor(redis_url, redis_conn, start_gateway) -> None:
    gateway = start_gateway(redis_url, "--models", "m", "--timeout", "10", "--queued-texts-floor", "50")
    assert limits(gateway) == {"m": 50}  # no worker at all: scale-from-zero still queues
    advertise(redis_conn, "w1", "m", None)  # up, nothing served yet
    until(lambda: limits(gateway) == {"m": 50}, 10, "a worker without a measurement")
    advertise(redis_conn, "w1", "m", 100.0)
    until(lambda: limits(gateway) == {"m": 500}, 10, "100 texts/s × 10 s × 0.5")
    advertise(redis_conn, "w2", "m", 60.0)
    advertise(redis_conn, "w3", "m", 1000.0, stopping=True)  # draining: not counted
    advertise(redis_conn, "w4", "other", 7.0)  # another model's worker
    until(lambda: limits(gateway) == {"m": 800, "other": 50}, 10, "both workers of m summed")
    metrics = gateway.metrics()
    assert metrics[("vecq_gateway_queued_texts_limit", (("model", "m"),))] == 800
    assert metrics[("vecq_gateway_capacity_texts_per_s", (("model", "m"),))] == 160
    advertise(redis_conn, "w1", "m", 2.0)
    advertise(redis_conn, "w2", "m", 1.0)  # slow workers: 3 × 10 × 0.5 = 15, under the floor
    until(lambda: limits(gateway) == {"m": 50, "other": 50}, 10, "the floor again")


def test_an_explicit_limit_overrides_the_workers_rate(redis_url, redis_conn, start_gateway) -> None:
    advertise(redis_conn, "w1", "m", 1000.0)
    gateway = start_gateway(redis_url, "--models", "m", "--max-queued-texts", "7")
    assert limits(gateway) == {"m": 7}


def test_over_the_limit_is_429_in_openais_shape_and_enqueues_nothing(
    redis_url, redis_conn, start_gateway
) -> None:
    gateway = start_gateway(redis_url, "--models", "m", "--timeout", "1", "--queued-texts-floor", "4")
    with Client(redis_url) as producer:  # another producer's 3 texts wait (no worker serves m)
        producer.submit(["a", "b", "c"], model="m")
    key = f"rq:queue:{queue_name('m', 'interactive')}"
    before = (
        redis_conn.llen(key),
        int(redis_conn.get(queued_texts_key("m"))),
        len(redis_conn.keys("rq:job:*")),
    )
    assert before == (1, 3, 1)

    answer = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": "m", "input": ["d", "e"]}, timeout=10)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert answer.json() == {
        "error": {
            "message": "queues of model 'm' hold 3 texts, limit 4 (queued_texts_floor); retry after 1s",
            "type": "rate_limit_error",
            "param": None,
            "code": "queue_full",
        }
    }
    after = (
        redis_conn.llen(key),
        int(redis_conn.get(queued_texts_key("m"))),
        len(redis_conn.keys("rq:job:*")),
    )
    assert after == before  # nothing written

    with pytest.raises(openai.RateLimitError):  # the official client reads it as a rate limit
        gateway.openai().embeddings.create(model="m", input=["d", "e"])

    advertise(redis_conn, "w1", "m", 100.0)  # 100 × 1 s × 0.5 = 50: now there is room
    until(lambda: limits(gateway) == {"m": 50}, 10, "the limit sized from the record")
    with pytest.raises(openai.APIStatusError) as admitted:  # queued; nobody really serves it
        gateway.openai().embeddings.create(model="m", input=["d", "e"])
    assert admitted.value.status_code == 504
    metrics = gateway.metrics()
    assert metrics[("vecq_gateway_requests_total", (("status", "429"),))] == 2


def test_a_real_workers_rate_sizes_the_limit(redis_url, redis_conn, start_worker, start_gateway) -> None:
    """Across processes: a `vecq worker` that served jobs puts its rate in its record, and the
    gateway's limit is that rate × timeout × HEADROOM."""
    start_worker(redis_url)  # the null engine, default model
    gateway = start_gateway(redis_url, "--timeout", "20", "--queued-texts-floor", "1")
    until(lambda: MODEL in limits(gateway), 60, "the worker advertising its model")
    client = gateway.openai()
    for i in range(5):
        assert (
            len(client.embeddings.create(model="default", input=[f"t{i}.{k}" for k in range(16)]).data) == 16
        )

    def record() -> dict:
        (name,) = redis_conn.keys("vecq:health:*")
        return json.loads(redis_conn.get(name))

    until(lambda: record()["capacity_texts_per_s"], 10, "the worker's measured rate")
    rate = record()["capacity_texts_per_s"]
    assert rate > 0 and record()["texts"] == 80
    until(lambda: limits(gateway) == {MODEL: int(rate * 20 * HEADROOM)}, 10, "the limit from that rate")


# --- narrow units -------------------------------------------------------------------------------
def test_sized_limit_is_the_timeouts_work_times_headroom_never_below_the_floor() -> None:
    assert sized_limit(1000.0, 30.0, floor=1024) == int(1000 * 30 * HEADROOM)
    assert sized_limit(10.0, 30.0, floor=1024) == 1024
    assert sized_limit(0.0, 30.0, floor=5) == 5
    assert sized_limit(math.nan, 30.0, floor=5) == 5
    assert sized_limit(100.0, 2.0, floor=1, headroom=1.0) == 200


def test_the_floor_is_a_setting_and_an_env_var(monkeypatch) -> None:
    assert GatewaySettings().queued_texts_floor == 1024
    monkeypatch.setenv("VECQ_QUEUED_TEXTS_FLOOR", "64")
    assert GatewaySettings().queued_texts_floor == 64
