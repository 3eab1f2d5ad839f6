"""Backpressure: QueueFull at the limit, waiting for room, and a counter that heals itself."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import redis

from vecq.producer import Client, QueueFull
from vecq.producer.backpressure import estimate, has_room
from vecq.producer.contract import DEFAULT_MODEL
from vecq.producer.keys import queued_texts_key

MSG = "queues of model 'all-minilm-l6-v2' hold {q} texts, limit {limit} (max_queued_texts)"


def test_queue_full_at_the_limit(redis_url: str, redis_conn: redis.Redis) -> None:
    with Client(redis_url, max_queued_texts=10) as c:
        c.submit(["t"] * 6)
        c.submit(["t"] * 4, lane="bulk")  # both lanes count: 10 of 10
        with pytest.raises(QueueFull) as info:
            c.submit(["one more"])
    assert (info.value.queued, info.value.limit) == (10, 10)
    assert str(info.value) == MSG.format(q=10, limit=10) + "; pass wait_for_room=SECONDS to wait"
    assert redis_conn.llen("rq:queue:vecq.all-minilm-l6-v2.interactive") == 1
    assert int(redis_conn.get(queued_texts_key(DEFAULT_MODEL))) == 10


def test_other_models_do_not_count(redis_url: str) -> None:
    with Client(redis_url, max_queued_texts=3) as c:
        c.submit(["a", "b", "c"], model="other-model")
        job = c.submit(["a", "b", "c"])
        assert job.origin == "vecq.all-minilm-l6-v2.interactive"
        assert c.queued_texts("other-model") == 3


def test_wait_for_room_gives_up_at_its_deadline(redis_url: str) -> None:
    with Client(redis_url, max_queued_texts=2) as c:
        c.submit(["a", "b"])
        start = time.monotonic()
        with pytest.raises(QueueFull) as info:
            c.submit(["c"], wait_for_room=0.4)
        waited = time.monotonic() - start
    assert 0.4 <= waited < 1.5
    assert str(info.value).startswith(MSG.format(q=2, limit=2) + " after waiting 0.4")


def test_wait_for_room_succeeds_once_a_worker_drains(redis_url: str, redis_conn: redis.Redis, drain) -> None:
    with Client(redis_url, max_queued_texts=2) as c:
        first = c.submit(["a", "b"], lane="bulk")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.submit, ["c"], wait_for_room=20)
            time.sleep(0.2)
            assert not waiting.done()
            # A stock rq worker never decrements: the empty queues reset the counter.
            drain(lanes=("bulk",))
            second = waiting.result(timeout=20)
        assert c.result(first, timeout=5).shape == (2, 384)
        assert second.id != first.id
        assert c.queued_texts() == 1
    assert int(redis_conn.get(queued_texts_key(DEFAULT_MODEL))) == 1


def test_counter_is_bounded_by_queue_lengths(redis_url: str, redis_conn: redis.Redis) -> None:
    with Client(redis_url, max_queued_texts=100) as c:
        c.submit(["a"])
        redis_conn.set(queued_texts_key(DEFAULT_MODEL), 10**9)  # a worker that never decremented
        assert c.queued_texts() == 4096  # 1 job holds at most MAX_TEXTS_PER_JOB texts
        redis_conn.set(queued_texts_key(DEFAULT_MODEL), -50)  # one that decremented twice
        assert c.queued_texts() == 1  # at least one text per queued job
        redis_conn.delete("rq:queue:vecq.all-minilm-l6-v2.interactive")
        redis_conn.set(queued_texts_key(DEFAULT_MODEL), 77)
        assert c.queued_texts() == 0
    assert int(redis_conn.get(queued_texts_key(DEFAULT_MODEL))) == 0  # reset in Redis


def test_room_rules() -> None:
    assert has_room(0, 50, 10)  # empty queues admit an oversized job
    assert has_room(5, 5, 10)
    assert not has_room(5, 6, 10)
    assert has_room(10**6, 1, None)
    assert estimate(jobs=3, counter=0) == 3
    assert estimate(jobs=0, counter=12) == 0
    assert estimate(jobs=2, counter=100) == 100


def test_no_limit_by_default(client: Client) -> None:
    assert client.max_queued_texts is None
    for _ in range(3):
        client.submit(["x"] * 100)
    assert client.queued_texts() == 300


def test_limit_from_env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("VECQ_MAX_QUEUED_TEXTS", "5")
    with Client(redis_url) as c:
        assert c.max_queued_texts == 5
