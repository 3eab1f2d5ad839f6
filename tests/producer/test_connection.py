"""Redis URLs: passwords masked everywhere, auth/ACL/db honoured, outages retried without duplicates."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time

import numpy as np
import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel
from rq import Queue, SimpleWorker

from vecq.producer import Client, MsgpackSerializer, RedisUnavailable, mask_url
from vecq.producer.connection import (
    READ_TIMEOUT_S,
    describe,
    is_refused,
    is_transient,
    open_async,
    open_sync,
    parse_sentinel_url,
)
from vecq.producer.keys import queue_name

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
    """The write landed but its reply was lost: the enqueuer checks and does not write again."""
    from vecq.producer.enqueue import Enqueuer

    real_write = Enqueuer._write
    calls = {"n": 0}

    def lossy_write(self, pipe):  # type: ignore[no-untyped-def]
        real_write(self, pipe)
        if calls["n"] == 0:
            calls["n"] += 1
            raise redis.ConnectionError("connection reset while reading the script's reply")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Enqueuer, "_write", lossy_write)
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


# --- Sentinel URLs (the failover itself: tests/worker/test_sentinel.py) ----------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "redis+sentinel://:pw1@s1:26379,s2:26380/mymaster/2?sentinel_password=pw2",
            "redis+sentinel://:***@s1:26379,s2:26380/mymaster/2?sentinel_password=***",
        ),
        ("redis+sentinel://alice:p%40w@[::1]:26379/svc", "redis+sentinel://alice:***@[::1]:26379/svc"),
        (
            "rediss+sentinel://s1/svc?ssl_cert_reqs=none&sentinel_password=x",
            "rediss+sentinel://s1/svc?ssl_cert_reqs=none&sentinel_password=***",
        ),
        ("redis+sentinel://s1,s2/svc", "redis+sentinel://s1,s2/svc"),
    ],
)
def test_mask_sentinel_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_sentinel_url_parts() -> None:
    hosts = "s1,s2:26380,[::1]:26381"
    url = f"redis+sentinel://alice:p%40w@{hosts}/my%20svc/3?sentinel_password=spw&socket_timeout=30"
    target = parse_sentinel_url(url)
    assert target.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (target.service, target.db, target.username, target.password) == ("my svc", 3, "alice", "p@w")
    assert target.options == {"sentinel_password": "spw", "socket_timeout": 30.0}
    assert not target.tls and target.min_other_sentinels == 0
    plain = parse_sentinel_url("redis+sentinel://s1/svc/?min_other_sentinels=1")
    assert (plain.db, plain.username, plain.password, plain.min_other_sentinels) == (0, None, None, 1)
    assert parse_sentinel_url("rediss+sentinel://s1/svc").tls


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("redis+sentinel://:pw@/svc", "no sentinel address (expected redis+sentinel://"),
        ("redis+sentinel://:pw@s1", "no service name (expected redis+sentinel://"),
        ("redis+sentinel://:pw@s1/svc/0/x", "path '/svc/0/x' is not /service_name[/db]"),
        ("redis+sentinel://:pw@s1/svc/zero", "db 'zero' is not a number"),
        ("redis+sentinel://:pw@s1:26379x/svc", "sentinel port '26379x' of 's1:26379x' is not a port number"),
        ("redis+sentinel://:pw@s1:0/svc", "sentinel port '0' of 's1:0' is not a port number"),
        ("redis+sentinel://:pw@s1,,s2/svc", "empty sentinel host in 's1,,s2'"),
        ("redis+sentinel://:pw@s1/svc?sentinel_pasword=pw", "unknown option 'sentinel_pasword' (known: "),
        ("redis+sentinel://:pw@s1/svc?socket_timeout=soon", "option socket_timeout='soon' is not a number"),
        ("redis+sentinel://:pw@s1/svc?socket_timeout=0", "option socket_timeout='0' is out of range"),
        (
            "redis+sentinel://:pw@s1/svc?ssl_ca_certs=/ca.pem",
            "option 'ssl_ca_certs' needs rediss+sentinel://",
        ),
        (
            "rediss+sentinel://:pw@s1/svc?ssl_cert_reqs=maybe",
            "option ssl_cert_reqs='maybe' is not none, optional",
        ),
    ],
)
def test_bad_sentinel_url_is_one_line_naming_the_fault(url: str, what: str) -> None:
    with pytest.raises(RedisUnavailable) as info:
        Client(url)
    message = str(info.value)
    assert message.startswith(f"Redis URL {mask_url(url)} is not valid: {what}"), message
    assert "\n" not in message and ":pw@" not in message


def test_sentinel_client_is_a_primary_pool_with_vecq_options() -> None:
    url = "redis+sentinel://:data-pw@127.0.0.1:26379,127.0.0.1:26380/svc/4?sentinel_password=sent-pw"
    with Client(url) as c:
        pool = c.connection.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool) and pool.is_master
        kw = pool.connection_kwargs
        assert (kw["db"], kw["password"], kw["socket_timeout"]) == (4, "data-pw", READ_TIMEOUT_S)
        assert kw["retry"].get_retries() == 0  # vecq decides what is safe to repeat
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sent-pw"}
        assert describe(c.connection) == "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/svc/4"
        assert (
            repr(c)
            == "Client('redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/svc/4?sentinel_password=***')"
        )
    tls = open_sync("rediss+sentinel://s1/svc?ssl_cert_reqs=none&socket_timeout=40")
    assert tls.connection_pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    assert tls.connection_pool.connection_kwargs["socket_timeout"] == 40.0
    sentinel = tls.connection_pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_class is redis.SSLConnection
    aio = open_async("redis+sentinel://s1/svc/1")
    assert isinstance(aio.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert aio.connection_pool.connection_kwargs["db"] == 1


def test_unreachable_sentinels_are_one_masked_line() -> None:
    port = free_port()
    url = f"redis+sentinel://:data-pw@127.0.0.1:{port}/vecq?sentinel_password=sent-pw"
    with Client(url, settings=fast_settings()) as c, pytest.raises(RedisUnavailable) as info:
        c.submit(["x"])
    message = str(info.value)
    assert message.startswith(
        f"Redis at redis+sentinel://:***@127.0.0.1:{port}/vecq?sentinel_password=***: cannot connect "
        "(MasterNotFoundError: No master found for 'vecq'"
    ), message
    assert "data-pw" not in message and "sent-pw" not in message and "\n" not in message


def _enqueue_attempts(admin: redis.Redis) -> int:
    """Enqueue scripts the server has run (`enqueue._RUN_QUEUED`): one per attempt of an enqueue.
    The first EVALSHA finds no script and is sent again after a SCRIPT LOAD, so loads don't count."""
    stats = admin.info("commandstats")
    calls = {k: int(v.get("calls", 0)) for k, v in stats.items()}
    return calls.get("cmdstat_evalsha", 0) - calls.get("cmdstat_script|load", 0)


def _promote_after_a_refusal(admin: redis.Redis, seen: int, promoted: threading.Event) -> None:
    """`REPLICAOF NO ONE` (a failover) once the server has refused one more enqueue attempt."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _enqueue_attempts(admin) > seen:
            admin.replicaof("NO", "ONE")
            promoted.set()
            return
        time.sleep(0.01)


def test_read_only_replica_is_retried_then_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A demoted primary answers writes with READONLY: transient (a failover may be under way),
    so retried -- each attempt one transaction the server saw, and a replica promoted while the
    client retries takes the job, once -- and named as such once the retries are spent."""
    assert is_transient(redis.ReadOnlyError("READONLY")) and not is_refused(redis.ReadOnlyError("READONLY"))
    port, orphan = free_port(), free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "secret"]
    args += ["--save", "", "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(orphan)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://:secret@127.0.0.1:{port}/0"
        admin = redis.Redis(port=port, password="secret")
        with Client(url, settings=fast_settings(connect_attempts=3)) as c:
            for _ in range(200):
                with contextlib.suppress(RedisUnavailable):
                    if c.ping():
                        break
                time.sleep(0.02)
            with pytest.raises(RedisUnavailable) as info:
                c.submit(["x"])
        assert _enqueue_attempts(admin) == 3 and admin.dbsize() == 0  # three attempts, each refused
        promoted = threading.Event()
        promote = threading.Thread(target=_promote_after_a_refusal, args=(admin, 3, promoted))
        with Client(url, settings=fast_settings(connect_attempts=100, retry_backoff_cap=0.1)) as c:
            promote.start()
            job = c.submit(["after the promotion"])
        promote.join(20)
        assert promoted.is_set() and _enqueue_attempts(admin) >= 5  # refused, then retried and landed
        queue = f"rq:queue:{queue_name('all-minilm-l6-v2', 'interactive')}"
        assert admin.lrange(queue, 0, -1) == [job.id.encode()]
    finally:
        stop_redis(proc)
    assert str(info.value).startswith(
        f"Redis at redis://:***@127.0.0.1:{port}/0: read-only replica (a demoted primary?) (ReadOnlyError: "
    )
