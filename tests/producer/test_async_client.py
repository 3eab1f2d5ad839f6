"""AsyncClient: the same behaviour as Client, awaited; waiting never blocks the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import redis
from rq.job import Job, JobStatus

from vecq.producer import (
    AsyncClient,
    BadRequest,
    JobFailed,
    JobNotFound,
    JobTimeout,
    MsgpackSerializer,
    QueueFull,
)
from vecq.producer.contract import DEFAULT_MODEL, META_KEY, WIRE_VERSION, EmbedRequest


def test_submit_then_result(redis_url: str, redis_conn: redis.Redis, drain, expected) -> None:
    async def submit() -> list[Job]:
        async with AsyncClient(redis_url) as c:
            return [await c.submit(["one"]), await c.submit(["two", "three"], lane="bulk", job_id="async-2")]

    a, b = asyncio.run(submit())
    assert b.id == "async-2"
    stored = Job.fetch("async-2", connection=redis_conn, serializer=MsgpackSerializer)
    assert (stored.meta, stored.retries_left, stored.origin) == (
        {META_KEY: WIRE_VERSION},
        3,
        "vecq.all-minilm-l6-v2.bulk",
    )
    drain()

    async def results() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(redis_url) as c:
            return await c.result(a, timeout=5), await c.result("async-2", timeout=5)

    va, vb = asyncio.run(results())
    np.testing.assert_array_equal(va, expected(["one"]))
    np.testing.assert_array_equal(vb, expected(["two", "three"]))


def test_embed_waits_without_blocking_the_loop(redis_url: str, drain, expected) -> None:
    """While embed awaits its result, other coroutines run (ticks) and a worker can finish it."""
    texts = ["async", "embedding"]
    submitted = threading.Event()

    async def main() -> tuple[np.ndarray, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async with AsyncClient(redis_url) as c:
            tick = asyncio.create_task(ticker())
            job = await c.submit(texts)
            submitted.set()
            vectors = await c.result(job, timeout=20)
            tick.cancel()
        return vectors, ticks

    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(out=asyncio.run(main())))
    thread.start()
    assert submitted.wait(10)
    threading.Event().wait(0.3)  # let the ticker run while the job waits in the queue
    drain()
    thread.join(20)
    vectors, ticks = box["out"]  # type: ignore[misc]
    np.testing.assert_array_equal(vectors, expected(texts))
    assert ticks >= 10


def test_errors_match_the_sync_client(redis_url: str, drain) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url, max_queued_texts=3) as c:
            with pytest.raises(BadRequest, match=r"^texts\[0\]: expected str, got NoneType$"):
                await c.submit([None])  # type: ignore[list-item]
            job = await c.submit(["a", "b", "c"])
            with pytest.raises(QueueFull) as full:
                await c.submit(["d"], wait_for_room=0.2)
            assert (full.value.queued, full.value.limit) == (3, 3)
            with pytest.raises(JobTimeout, match=rf"^job {job.id} has no result after 0.2s$"):
                await c.result(job, timeout=0.2)
            with pytest.raises(JobNotFound):
                await c.result("missing", timeout=1)
            assert await c.queued_texts() == 3
            assert await c.ping() is True

    asyncio.run(main())


def test_failed_job(redis_url: str, redis_conn: redis.Redis, drain) -> None:
    async def submit() -> Job:
        async with AsyncClient(redis_url) as c:
            bad = EmbedRequest.model_construct(
                texts=[1], model=DEFAULT_MODEL, lane="interactive", truncate=True
            )
            return (await asyncio.to_thread(c.sync.enqueuer.enqueue, [(bad, "async-bad")]))[0]

    job = asyncio.run(submit())
    drain()

    async def result() -> None:
        async with AsyncClient(redis_url) as c:
            await c.result(job, timeout=5)

    with pytest.raises(JobFailed) as info:
        asyncio.run(result())
    assert info.value.reason == "vecq.producer.errors.BadRequest: texts[0]: expected str, got int"
    assert job.get_status() == JobStatus.FAILED
