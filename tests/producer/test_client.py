"""Client against a real Redis, with jobs run by a stock rq SimpleWorker and the null engine."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from vecq.producer import (
    Client,
    JobFailed,
    JobNotFound,
    JobTimeout,
    MsgpackSerializer,
)
from vecq.producer.contract import (
    DEFAULT_MODEL,
    JOB_FUNCTION,
    META_KEY,
    WIRE_VERSION,
    EmbedRequest,
)
from vecq.producer.keys import queue_name, queued_texts_key

TEXTS = ["The cat sits on the mat.", "向量检索", "", "a much longer text " * 20]


def test_embed_equals_null_embedder(client: Client, drain, expected) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.embed, TEXTS, timeout=20)
        deadline = time.monotonic() + 10
        while client.queued_texts() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        drain()
        vectors = future.result(timeout=20)
    assert vectors.dtype == np.float32
    assert vectors.shape == (4, 384)
    assert vectors.flags.writeable
    np.testing.assert_array_equal(vectors, expected(TEXTS))


def test_submit_writes_an_ordinary_rq_job(client: Client, redis_conn: redis.Redis) -> None:
    job = client.submit(["hello", "world"], job_id="my-job-1", lane="bulk")
    assert job.id == "my-job-1"
    stored = Job.fetch("my-job-1", connection=redis_conn, serializer=MsgpackSerializer)
    assert stored.func_name == JOB_FUNCTION
    assert stored.args == (["hello", "world"],) or stored.args == [["hello", "world"]]
    assert stored.kwargs == {"model": DEFAULT_MODEL, "lane": "bulk", "truncate": True}
    assert stored.meta == {META_KEY: WIRE_VERSION}
    assert stored.retries_left == 3
    assert stored.result_ttl == 3600
    assert stored.failure_ttl == 7 * 86400
    assert stored.ttl is None
    assert stored.description == f"vecq embed 2 texts ({DEFAULT_MODEL}, bulk)"
    assert stored.get_status() == JobStatus.QUEUED
    # stored uncompressed (enqueue.VecqJob): a msgpack 4-tuple, which stock rq reads back above
    assert redis_conn.hget("rq:job:my-job-1", "data")[:1] == b"\x94"
    queue = Queue(queue_name(DEFAULT_MODEL, "bulk"), connection=redis_conn, serializer=MsgpackSerializer)
    assert queue.job_ids == ["my-job-1"]
    assert int(redis_conn.get(queued_texts_key(DEFAULT_MODEL))) == 2
    assert client.queued_texts() == 2


def test_submit_then_result(client: Client, drain, expected) -> None:
    a = client.submit(["first"])
    b = client.submit(["second", "third"], lane="bulk")
    drain()
    np.testing.assert_array_equal(client.result(b.id, timeout=5), expected(["second", "third"]))
    np.testing.assert_array_equal(client.result(a, timeout=5), expected(["first"]))
    # Results can be read again until result_ttl.
    np.testing.assert_array_equal(client.result(a, timeout=0), expected(["first"]))
    assert a.get_status() == JobStatus.FINISHED


def test_timeout_names_the_job(client: Client) -> None:
    job = client.submit(["nobody is working"])
    start = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        client.result(job, timeout=0.3)
    elapsed = time.monotonic() - start
    assert str(info.value) == f"job {job.id} has no result after 0.3s"
    assert info.value.job_id == job.id
    assert isinstance(info.value, TimeoutError)
    assert 0.29 <= elapsed < 2.0
    assert job.get_status() == JobStatus.QUEUED  # still there for a later result()


def test_embed_timeout_raises_job_timeout(client: Client) -> None:
    with pytest.raises(JobTimeout, match=r"^job [0-9a-f-]{36} has no result after 0.2s$"):
        client.embed(["x"], timeout=0.2)


def test_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(JobNotFound) as info:
        client.result("no-such-job", timeout=5)
    assert str(info.value) == "job no-such-job not found (never enqueued, expired or deleted)"


def test_failed_job_raises_its_one_line_reason(client: Client, drain, redis_conn: redis.Redis) -> None:
    # Bypass submit-side validation to get a job the worker refuses (as a buggy producer might).
    bad = EmbedRequest.model_construct(
        texts=["ok", 5], model=DEFAULT_MODEL, lane="interactive", truncate=True
    )
    [job] = client.enqueuer.enqueue([(bad, "bad-job")])
    drain()
    with pytest.raises(JobFailed) as info:
        client.result(job, timeout=5)
    reason = "vecq.producer.errors.BadRequest: texts[1]: expected str, got int"
    assert info.value.reason == reason
    assert info.value.job_id == "bad-job"
    assert str(info.value) == f"job bad-job failed: {reason}"
    stored = Job.fetch("bad-job", connection=redis_conn, serializer=MsgpackSerializer)
    assert stored.get_status() == JobStatus.FAILED
    assert stored.retries_left == 0  # Retry(max=3) was used up before the failure was final
    assert stored.latest_result().exc_string.strip().splitlines()[-1] == reason


def test_job_options_come_from_settings(redis_url: str, redis_conn: redis.Redis) -> None:
    from vecq.producer import ProducerSettings

    settings = ProducerSettings(job_retries=0, result_ttl=60, failure_ttl=120, job_ttl=30, job_timeout=90)
    with Client(redis_url, settings=settings) as c:
        job = c.submit(["x"])
    stored = Job.fetch(job.id, connection=redis_conn, serializer=MsgpackSerializer)
    assert (stored.retries_left, stored.result_ttl, stored.failure_ttl, stored.ttl, stored.timeout) == (
        None,
        60,
        120,
        30,
        90,
    )
    assert 0 < redis_conn.ttl(stored.key) <= 30


def test_url_from_env_read_at_construction(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("VECQ_REDIS_URL", redis_url)
    with Client() as c:
        assert c.url == redis_url
        assert c.ping() is True
    monkeypatch.delenv("VECQ_REDIS_URL")
    with Client() as c:
        assert c.url == "redis://localhost:6379/0"


def test_caller_connection_is_used_and_left_open(redis_url: str, redis_conn: redis.Redis) -> None:
    c = Client(connection=redis_conn)
    job = c.submit(["x"])
    c.close()
    assert redis_conn.exists(job.key) == 1
    assert c.url == redis_url  # host, port (VECQ_TEST_REDIS_PORT) and db of the caller's connection


def test_resp3_connections_read_results_too(redis_url: str, drain, expected) -> None:
    """`?protocol=3` changes the shape of XREAD replies; results and bulk still decode."""
    from vecq.producer import BulkSubmitter

    with Client(redis_url + "?protocol=3") as c:
        job = c.submit(["resp3"])
        drain()
        np.testing.assert_array_equal(c.result(job, timeout=5), expected(["resp3"]))
        bulk = BulkSubmitter(c, run_id="resp3", chunk_size=2, window=4)
        chunks = bulk.run(["a", "b", "c"])
        c.submit(["unrelated"])  # keeps the generator's jobs company in the queue
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(lambda: dict(chunks))
            deadline = time.monotonic() + 10
            while not future.done() and time.monotonic() < deadline:
                drain()
                time.sleep(0.01)
            got = future.result(timeout=10)
    np.testing.assert_array_equal(got[0], expected(["a", "b"]))
    np.testing.assert_array_equal(got[1], expected(["c"]))
