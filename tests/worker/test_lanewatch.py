"""The interactive lane's watch, against real Redis: it wakes the main loop when a job lands,
changes nothing in the list, rate-limits itself while the job is not taken, and stops at once."""

from __future__ import annotations

import threading
import time

import redis

from vecq.worker import lanewatch
from vecq.worker.lanewatch import LaneWatch


def test_a_job_landing_wakes_the_loop_and_stays_where_it_was(redis_conn: redis.Redis) -> None:
    key = "rq:queue:watched"
    redis_conn.rpush(key, "older")
    wake = threading.Event()
    watch = LaneWatch(redis_conn, key, wake)
    redis_conn.delete(key)
    watch.start()
    try:
        time.sleep(0.1)  # blocked on the empty list
        assert not wake.is_set()
        redis_conn.rpush(key, "job-1", "job-2")
        assert wake.wait(1.0)
        assert redis_conn.lrange(key, 0, -1) == [b"job-1", b"job-2"]  # moved onto its own head
        assert watch.waiting
        wake.clear()
        # not taken: one wake per RETRY_S at most, not a busy loop
        time.sleep(10 * lanewatch.RETRY_S)
        assert watch.wakes <= 13
        redis_conn.delete(key)
        watch.taken()  # the main thread's take
        assert not watch.waiting
        time.sleep(0.1)
        wake.clear()
        time.sleep(0.2)
        assert not wake.is_set()  # empty again: blocked, no wakes
    finally:
        start = time.monotonic()
        watch.stop()
        stopped = time.monotonic() - start
    assert stopped < 0.5 * lanewatch.BLOCK_S  # CLIENT UNBLOCK ends the wait, not its timeout
    assert not watch._thread.is_alive()


def test_a_lost_connection_pauses_the_watch_and_it_recovers(redis_conn: redis.Redis) -> None:
    key = "rq:queue:watched-lost"
    wake = threading.Event()
    watch = LaneWatch(redis_conn, key, wake)
    watch.start()
    try:
        time.sleep(0.1)
        client = watch._client
        assert client is not None
        redis_conn.client_kill_filter(_id=client)  # the watch's connection dropped
        time.sleep(lanewatch.ERROR_PAUSE_S + 0.3)
        redis_conn.rpush(key, "job")
        assert wake.wait(1.0)
    finally:
        watch.stop()
        redis_conn.delete(key)
