"""Worker fixtures: a null-engine embedder, a worker factory, enqueue helpers (real Redis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import redis
from rq import Queue, Retry
from rq.job import Job
from rq.results import Result

from vecq.engines import Embedder
from vecq.producer.contract import JOB_FUNCTION
from vecq.producer.keys import queue_name
from vecq.producer.serializer import MsgpackSerializer
from vecq.worker.settings import WorkerSettings
from vecq.worker.worker import BatchWorker

from .servers import reap_spawned

MODEL = "all-minilm-l6-v2"
INTERACTIVE = queue_name(MODEL, "interactive")
BULK = queue_name(MODEL, "bulk")


@pytest.fixture(autouse=True)
def reap_workers() -> Iterator[None]:
    """Kills worker processes a test left running (a failed assertion skipped its stop)."""
    yield
    reap_spawned()


@pytest.fixture(scope="session")
def null_embedder() -> Embedder:
    """The reference: `Embedder.load(backend="null")` (vectors do not depend on batch shapes)."""
    return Embedder.load(backend="null")


@pytest.fixture
def make_worker(redis_url: str) -> Iterator[Callable[..., BatchWorker]]:
    """Build BatchWorkers on the test's database; `embedder=` swaps the engine (e.g. a failing one)."""
    made: list[BatchWorker] = []

    def make(embedder: Embedder | None = None, **overrides: object) -> BatchWorker:
        fields: dict[str, object] = {
            "redis_url": redis_url,
            "backend": "null",
            "burst": True,
            "heartbeat_ttl": 5,
            "cleanup_interval": 1.0,
            **overrides,
        }
        settings = WorkerSettings(**fields)
        w = BatchWorker(embedder, settings=settings) if embedder else BatchWorker.from_settings(settings)
        made.append(w)
        return w

    yield make
    for w in made:
        w.connection.close()


def run(worker: BatchWorker, *, timeout: float = 60.0) -> None:
    """Run a burst worker in a thread with a deadline (a hang fails the test, never blocks it)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.work(burst=True)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        worker.stop()
        t.join(10)
        pytest.fail(f"worker still running after {timeout}s")
    if errors:
        raise errors[0]


def enqueue(
    conn: redis.Redis,
    batches: Sequence[Sequence[object]],
    *,
    queue: str = INTERACTIVE,
    retries: int | None = 2,
    **kwargs: object,
) -> list[Job]:
    """One vecq job per item of `batches` (the item is the job's texts), through rq itself."""
    q = Queue(queue, connection=conn, serializer=MsgpackSerializer)
    opts = {"model": MODEL, **kwargs}
    data = [
        Queue.prepare_data(
            JOB_FUNCTION, args=[list(t)], kwargs=opts, retry=Retry(max=retries) if retries else None
        )
        for t in batches
    ]
    with conn.pipeline() as pipe:
        jobs = q.enqueue_many(data, pipeline=pipe)
        pipe.execute()
    return jobs


def result_of(conn: redis.Redis, job_id: str) -> Result | None:
    """The latest result of a job, read like a client does (vecq's serializer)."""
    return Result.fetch_latest(
        Job(job_id, connection=conn, serializer=MsgpackSerializer), serializer=MsgpackSerializer
    )


def vectors_of(conn: redis.Redis, job_id: str) -> np.ndarray:
    res = result_of(conn, job_id)
    assert res is not None and res.type == Result.Type.SUCCESSFUL, f"job {job_id}: {res and res.exc_string}"
    return res.return_value


@pytest.fixture
def serving() -> Iterator[Callable[[BatchWorker], BatchWorker]]:
    """Run non-burst workers in threads; stop (a drain) and join them at the end of the test."""
    running: list[tuple[BatchWorker, threading.Thread]] = []

    def start(worker: BatchWorker) -> BatchWorker:
        t = threading.Thread(target=worker.work, kwargs={"burst": False}, daemon=True)
        t.start()
        running.append((worker, t))
        deadline = time.monotonic() + 20
        while not worker.connection.exists(f"vecq:health:{worker.name}"):
            assert time.monotonic() < deadline, "the worker's health key never appeared"
            time.sleep(0.02)
        return worker

    yield start
    for worker, t in running:
        worker.stop()
        t.join(20)
        assert not t.is_alive(), "worker did not drain and stop"
