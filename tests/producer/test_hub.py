"""ResultHub: many awaited results, one reader and a bounded number of Redis connections."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio

from vecq.producer import AsyncClient, JobFailed, JobTimeout
from vecq.producer.contract import DEFAULT_MODEL, EmbedRequest


def in_loop_thread(main: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `main()` on an event loop in a thread (rq's worker, which drains, needs the main one)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def connected(conn: redis.Redis) -> int:
    return int(conn.info("clients")["connected_clients"])


def test_hundreds_of_waiting_requests_share_a_few_connections(
    redis_url: str, redis_conn: redis.Redis, drain, expected
) -> None:
    """Before the hub each waiting request held a connection (a pool of 100 locked a gateway
    out); now 300 wait at once while the client holds at most a handful more than before."""
    n = 300
    all_waiting = threading.Event()
    baseline = connected(redis_conn)
    seen: dict[str, int] = {}

    async def main() -> list[np.ndarray]:
        async with AsyncClient(redis_url) as c:
            tasks = [asyncio.create_task(c.embed([f"text {i}", f"other {i}"], timeout=60)) for i in range(n)]
            while c.hub.waiting < n:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # every wait is blocked on Redis now
            seen["extra"] = connected(redis_conn) - baseline
            seen["waiting"] = c.hub.waiting
            all_waiting.set()
            out = await asyncio.gather(*tasks)
            seen["after"] = c.hub.waiting
            return out

    thread, box = in_loop_thread(main)
    assert all_waiting.wait(60), box.get("error")
    drain()
    thread.join(60)
    assert "error" not in box, box.get("error")
    assert seen["waiting"] == n and seen["after"] == 0
    # enqueue threads (asyncio's default pool) + the client's pool + the hub's reader
    assert seen["extra"] <= 12, seen
    for i, vectors in enumerate(box["out"]):
        np.testing.assert_array_equal(vectors, expected([f"text {i}", f"other {i}"]))


def test_a_failure_a_timeout_and_a_cancelled_wait_end_alone(redis_url: str, drain, expected) -> None:
    ready = threading.Event()
    outcomes: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncClient(redis_url) as c:
            bad = EmbedRequest.model_construct(
                texts=[1], model=DEFAULT_MODEL, lane="interactive", truncate=True
            )
            (failing,) = await asyncio.to_thread(c.sync.enqueuer.enqueue, [(bad, "hub-bad")])
            good = asyncio.create_task(c.embed(["fine"], timeout=60))
            failed = asyncio.create_task(c.hub.wait(failing.id, timeout=60))
            cancelled = asyncio.create_task(c.embed(["cancel me"], timeout=60))
            start = time.monotonic()
            with pytest.raises(JobTimeout):  # a job no worker will take before the drain
                await c.hub.wait("never-enqueued", timeout=0.3)
            outcomes["timeout_s"] = time.monotonic() - start
            while c.hub.waiting < 3:
                await asyncio.sleep(0.01)
            cancelled.cancel()
            await asyncio.sleep(0.05)
            outcomes["waiting_after_cancel"] = c.hub.waiting
            ready.set()
            outcomes["good"] = await good
            with pytest.raises(JobFailed) as info:
                await failed
            outcomes["reason"] = info.value.reason
            outcomes["left"] = c.hub.waiting

    thread, box = in_loop_thread(main)
    assert ready.wait(30), box.get("error")
    drain()
    thread.join(30)
    assert "error" not in box, box.get("error")
    assert 0.3 <= outcomes["timeout_s"] < 1.3
    assert outcomes["waiting_after_cancel"] == 2 and outcomes["left"] == 0
    np.testing.assert_array_equal(outcomes["good"], expected(["fine"]))
    assert outcomes["reason"] == "vecq.producer.errors.BadRequest: texts[0]: expected str, got int"


def test_a_result_written_before_the_wait_began_is_read(redis_url: str, drain, expected) -> None:
    async def submit() -> str:
        async with AsyncClient(redis_url) as c:
            return (await c.submit(["early"])).id

    job_id = asyncio.run(submit())
    drain()

    async def wait() -> np.ndarray:
        async with AsyncClient(redis_url) as c:
            return await c.hub.wait(job_id, timeout=5)

    np.testing.assert_array_equal(asyncio.run(wait()), expected(["early"]))


def test_a_timed_out_request_cancels_its_job_if_nobody_took_it(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    from vecq.producer.keys import canceled_key, job_key, queue_key, queued_texts_key

    queue = f"vecq.{DEFAULT_MODEL}.interactive"

    async def main() -> tuple[str, int, bool]:
        async with AsyncClient(redis_url) as c:
            with pytest.raises(JobTimeout):
                await c.embed(["nobody serves this", "nor this"], timeout=0.3)
            taken = await c.submit(["a worker took this one"])
            assert redis_conn.lrem(queue_key(queue), 1, taken.id) == 1  # as a take does
            again = await c.cancel_untaken(taken, DEFAULT_MODEL, 1)
            return taken.id, c.canceled_jobs, again

    taken_id, canceled, again = asyncio.run(main())
    assert canceled == 1 and again is False
    assert redis_conn.llen(queue_key(queue)) == 0
    (gone,) = [m.decode() for m in redis_conn.zrange(canceled_key(queue), 0, -1)]
    assert redis_conn.hget(job_key(gone), "status") == b"canceled"
    assert 0 < redis_conn.ttl(job_key(gone)) <= 3600
    assert redis_conn.hget(job_key(taken_id), "status") != b"canceled"
    # the taken job's 1 text stays counted (its worker takes it off); the cancelled 2 are given back
    assert int(redis_conn.get(queued_texts_key(DEFAULT_MODEL))) == 1


def test_served_models_are_read_once_however_many_requests_ask(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    """Each request reading the workers' health records itself took a connection apiece (100
    under load); concurrent askers now share one read."""
    import json as _json

    from vecq.producer.gateway.served import ServedModels

    redis_conn.set("vecq:health:w1", _json.dumps({"model": "m1", "stopping": False}), ex=30)
    redis_conn.set("vecq:health:w2", _json.dumps({"model": "m2", "stopping": True}), ex=30)

    async def main() -> tuple[list[bool], int, list[str]]:
        client = redis.asyncio.Redis.from_url(redis_url)
        served = ServedModels(client, ["allowed"])
        reads = 0
        read = served._read

        async def counted() -> None:
            nonlocal reads
            reads += 1
            await read()

        served._read = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(served.serves(m) for m in ["m1", "m2", "allowed", "nope"] * 50))
        names = await served.names()
        await client.aclose()
        return answers[:4], reads, names

    answers, reads, names = asyncio.run(main())
    assert answers == [True, False, True, False]  # m2's worker is stopping
    assert reads <= 2  # the first read, and the one immediate re-check for models not seen
    assert names == ["allowed", "m1"]
