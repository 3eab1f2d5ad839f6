"""The idle spin (issue 14's idle latency): a worker waiting for jobs may poll its connection
for `idle_spin_ms` before its thread sleeps.  The poll returns as soon as a reply is there and
gives up after the time set; a script's reply is polled for the same way (the finish write of
a query's result); a spinning worker serves what lands meanwhile exactly."""

from __future__ import annotations

import threading
import time

import numpy as np
import redis

from vecq.worker.connection import run_script_spinning, spin_until_readable

from .conftest import enqueue, vectors_of


def test_spin_returns_when_the_reply_lands_and_gives_up_after_its_time(redis_url: str) -> None:
    pool = redis.Redis.from_url(redis_url).connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("BLPOP", "vecq:test:spin", 0.05)  # no reply for 50 ms
        start = time.perf_counter()
        assert not spin_until_readable(conn, 0.01)  # gave up first
        assert 0.01 <= time.perf_counter() - start < 0.045
        assert spin_until_readable(conn, 5.0)  # the timeout's nil reply
        assert time.perf_counter() - start < 1.0
        assert conn.read_response() is None
        assert not spin_until_readable(conn, 0.0)  # off: never polls
    finally:
        pool.release(conn)


def test_a_script_run_spinning_answers_and_reloads_a_lost_script(redis_conn) -> None:
    script = redis_conn.register_script("return {ARGV[1], ARGV[2]}")
    assert run_script_spinning(redis_conn, script, ["a", "b"], 0.01) == [b"a", b"b"]
    redis_conn.script_flush()  # as after a restart: EVALSHA meets NOSCRIPT, and loads it again
    assert run_script_spinning(redis_conn, script, ["c", "d"], 0.01) == [b"c", b"d"]
    assert redis_conn.script_exists(script.sha) == [True]


def test_a_spinning_worker_serves_jobs_that_land_while_it_spins(
    redis_conn, make_worker, null_embedder
) -> None:
    worker = make_worker(idle_spin_ms=50.0, burst=False, lanes=("interactive", "bulk"))
    assert worker.serving.intake.idle_spin_s == 0.05
    thread = threading.Thread(target=worker.work, kwargs={"burst": False}, daemon=True)
    thread.start()
    try:
        for i in range(5):
            texts = [f"query {i}"]
            job = enqueue(redis_conn, [texts])[0]
            deadline = time.monotonic() + 10
            while redis_conn.hget(job.key, "status") != b"finished":
                assert time.monotonic() < deadline, "job not served"
                time.sleep(0.005)
            np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(texts))
            time.sleep(0.02 * i)  # inside the spin, and past it
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive() and worker.finished_jobs == 5
