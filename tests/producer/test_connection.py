"""Redis URLs: passwords masked everywhere, auth/ACL/db honoured, outages retried without duplicates."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
from rq import Queue, SimpleWorker

from vecq.producer import Client, MsgpackSerializer, RedisUnavailable, mask_url
from vecq.producer.contract import queue_name

from .conftest import SpawnedRedis, fast_settings, free_port, start_redis, stop_redis


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://alice:s3cr%40t@host/2", "redis://alice:***@host/2"),
        ("rediss://default:pw@cache.example.com:6380/1", "rediss://default:***@cache.example.com:6380/1"),
        (
            "redis://host:6379/0?password=hunter2&ssl_cert_reqs=none",
            "redis://host:6379/0?password=***&ssl_cert_reqs=none",
        ),
        ("redis://alice@host/0", "redis://alice@host/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_password_url_works(secret_redis: SpawnedRedis) -> None:
    with Client(secret_redis.url(db=3)) as c:
        assert c.ping() is True
        job = c.submit(["hello"])
        assert repr(c) == f"Client('redis://:***@127.0.0.1:{secret_redis.port}/3')"
    raw = redis.Redis(port=secret_redis.port, password="secret", db=3)
    assert raw.exists(f"rq:job:{job.id}") == 1
    assert redis.Redis(port=secret_redis.port, password="secret", db=0).dbsize() == 0


def test_wrong_password_is_clear_and_masked(secret_redis: SpawnedRedis) -> None:
    url = secret_redis.url(password="wrong-pass")
    with Client(url, settings=fast_settings()) as c, pytest.raises(RedisUnavailable) as info:
        c.submit(["hello"])
    message = str(info.value)
    where = f"Redis at redis://:***@127.0.0.1:{secret_redis.port}/0"
    assert message.startswith(f"{where}: authentication failed (wrong password or ACL user) (")
    assert "wrong-pass" not in message and "secret" not in message
    assert "\n" not in message
    assert isinstance(info.value, ConnectionError)


def test_acl_user(secret_redis: SpawnedRedis) -> None:
    admin = redis.Redis(port=secret_redis.port, password="secret")
    admin.acl_setuser(
        "producer", enabled=True, passwords=["+pw-1"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    admin.acl_setuser("reader", enabled=True, passwords=["+pw-2"], keys=["*"], commands=["+@read", "+ping"])
    with Client(f"redis://producer:pw-1@127.0.0.1:{secret_redis.port}/1") as c:
        job = c.submit(["x"])
    assert redis.Redis(port=secret_redis.port, password="secret", db=1).exists(job.key) == 1
    reader = Client(f"redis://reader:pw-2@127.0.0.1:{secret_redis.port}/1", settings=fast_settings())
    with reader, pytest.raises(RedisUnavailable) as info:
        reader.submit(["x"])
    assert str(info.value).startswith(
        f"Redis at redis://reader:***@127.0.0.1:{secret_redis.port}/1: permission denied for this ACL user ("
    )
    assert "pw-2" not in str(info.value)


def test_unreachable_server(redis_url: str) -> None:
    port = free_port()
    c = Client(f"redis://:topsecret@127.0.0.1:{port}/0", settings=fast_settings())
    with c, pytest.raises(RedisUnavailable) as info:
        c.embed(["x"])
    assert str(info.value).startswith(
        f"Redis at redis://:***@127.0.0.1:{port}/0: cannot connect (ConnectionError: "
    )
    assert "topsecret" not in str(info.value)


def test_rediss_and_bad_urls() -> None:
    c = Client("rediss://:pw@cache.example.com:6380/2")
    assert c.connection.connection_pool.connection_class is redis.SSLConnection
    assert c.connection.connection_pool.connection_kwargs["db"] == 2
    with pytest.raises(RedisUnavailable) as info:
        Client("http://:pw@host/0")
    assert str(info.value).startswith("Redis URL http://:***@host/0 is not valid: ")
    assert "pw" not in str(info.value).replace("***", "")


def test_outage_is_retried_and_enqueues_once(secret_redis: SpawnedRedis, null_embedder) -> None:  # type: ignore[no-untyped-def]
    settings = fast_settings(connect_attempts=30, retry_backoff_cap=0.2)
    with Client(secret_redis.url(), settings=settings) as c:
        c.ping()
        stop_redis(secret_redis.proc)
        restarted = threading.Timer(
            0.5, lambda: setattr(secret_redis, "proc", start_redis(secret_redis.port, "secret"))
        )
        restarted.start()
        job = c.submit(["after the outage"])
        restarted.join()
        raw = redis.Redis(port=secret_redis.port, password="secret")
        queue = Queue(
            queue_name("all-minilm-l6-v2", "interactive"), connection=raw, serializer=MsgpackSerializer
        )
        assert queue.job_ids == [job.id]
        SimpleWorker([queue], connection=raw, serializer=MsgpackSerializer).work(burst=True)
        np.testing.assert_array_equal(c.result(job, timeout=5), null_embedder.embed(["after the outage"]))


def test_enqueue_reply_lost_is_not_repeated(client: Client, redis_conn: redis.Redis) -> None:
    """The EXEC landed but its reply was lost: the enqueuer checks and does not write again."""
    real_execute = redis.client.Pipeline.execute
    calls = {"n": 0}

    def lossy_execute(self, raise_on_error: bool = True):  # type: ignore[no-untyped-def]
        result = real_execute(self, raise_on_error)
        if self.transaction and calls["n"] == 0:
            calls["n"] += 1
            raise redis.ConnectionError("connection reset while reading the EXEC reply")
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redis.client.Pipeline, "execute", lossy_execute)
        start = time.monotonic()
        job = client.submit(["once"])
    assert calls["n"] == 1
    assert time.monotonic() - start < 2
    assert redis_conn.lrange("rq:queue:vecq.all-minilm-l6-v2.interactive", 0, -1) == [job.id.encode()]
    assert int(redis_conn.get("vecq:queued_texts:all-minilm-l6-v2")) == 1


def test_result_wait_outlasts_redis_py_default_read_timeout(redis_url: str) -> None:
    """redis-py 8 reads with a 5 s timeout by default; waiting for a slow job must not hit it."""
    import time

    from vecq.producer import Client, JobTimeout
    from vecq.producer.connection import READ_TIMEOUT_S
    from vecq.producer.results import MAX_BLOCK_MS

    assert MAX_BLOCK_MS / 1000 < READ_TIMEOUT_S
    client = Client(redis_url)
    job = client.submit(["nobody serves this queue"])
    t0 = time.monotonic()
    with pytest.raises(JobTimeout):
        client.result(job, timeout=7)
    assert time.monotonic() - t0 >= 7
