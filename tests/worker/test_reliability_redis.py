"""Reliability (issue 5), Redis going away: restarts with AOF (`appendfsync everysec`) in the middle
of a bulk run and interactive traffic, and a Redis that is not up yet when the worker starts."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import redis

from vecq.producer import Client

from .conftest import INTERACTIVE, MODEL, vectors_of
from .servers import VECQ, RedisServer, spawn_worker, stop_process, until

AOF = ["--appendonly", "yes", "--appendfsync", "everysec"]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["shutdown", "crash"])
def test_redis_restart_mid_run_loses_no_result_and_the_run_finishes(tmp_path, null_embedder, how) -> None:
    server = RedisServer(tmp_path, AOF, password="s3cret-pw").start()
    conn = server.admin()
    texts = [f"restart text {i} " + "word " * (i % 9) for i in range(20_000)]
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
    worker = spawn_worker(
        server.url(), tmp_path / "worker.log", "--worker-name", "w", "--prefetch-texts", "512"
    )
    try:
        with Client(server.url()) as client:
            done = [client.submit([f"kept {i}"], model=MODEL) for i in range(100)]
            until(lambda: conn.zcard(f"rq:finished:{INTERACTIVE}") == 100, 30, "the first jobs to finish")
        time.sleep(1.5)  # past one everysec fsync: these results are on disk
        cmd = [*VECQ, "embed", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out.npy")]
        embed = subprocess.Popen(
            [*cmd, "--redis", server.url(), "--chunk-size", "64", "--window", "1024"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "VECQ_CONNECT_ATTEMPTS": "40"},  # patience for a restart (~60 s)
        )
        until(lambda: conn.zcard(f"rq:wip:vecq.{MODEL}.bulk") > 0, 60, "the bulk run to be in flight")
        server.stop(how)
        time.sleep(2.0)  # both sides now see the outage and back off
        server.start()
        with Client(server.url()) as client:
            late = client.submit(["after the restart"], model=MODEL)
            np.testing.assert_array_equal(
                client.result(late, timeout=60), null_embedder.embed(["after the restart"])
            )
        stdout, _ = embed.communicate(timeout=180)
        assert embed.returncode == 0, stdout.decode()[-3000:]
        for i, job in enumerate(done):  # finished before the restart: still there, unchanged
            np.testing.assert_array_equal(vectors_of(conn, job.id), null_embedder.embed([f"kept {i}"]))
        assert worker.poll() is None  # it rode out the outage
        log = (tmp_path / "worker.log").read_text()
        assert "Redis is back after" in log and "s3cret-pw" not in log
    finally:
        code = stop_process(worker)
        server.stop()
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), null_embedder.embed(texts))


def test_worker_started_before_redis_waits_and_says_so_once(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path, password="hunter2-pw")
    worker = spawn_worker(server.url(), tmp_path / "worker.log", "--worker-name", "early")
    try:
        time.sleep(4.0)  # several retries' worth
        assert worker.poll() is None
        lines = (tmp_path / "worker.log").read_text().splitlines()
        waiting = [line for line in lines if "not reachable" in line]
        assert len(waiting) == 1, lines
        assert (
            f"Redis at redis://:***@127.0.0.1:{server.port}/0 is not reachable (ConnectionError)"
            in waiting[0]
        )
        assert not any("hunter2-pw" in line or "Traceback" in line for line in lines)
        server.start()
        with Client(server.url()) as client:
            vectors = client.embed(["came up late"], model=MODEL, timeout=60)
        np.testing.assert_array_equal(vectors, null_embedder.embed(["came up late"]))
        assert "answered after" in (tmp_path / "worker.log").read_text()
    finally:
        code = stop_process(worker)
        server.stop()
    assert code == 0


def test_a_take_sent_ahead_when_redis_goes_away_is_dropped_and_taking_resumes(tmp_path) -> None:
    """A take in flight on its own connection when Redis dies: checking it must not wedge the
    intake (the dead socket reads as ready, collecting it raises once, the next take works)."""
    from vecq.worker.intake import Intake
    from vecq.worker.jobstore import JobStore

    server = RedisServer(tmp_path, password="pw-ahead").start()
    conn = redis.Redis.from_url(server.url())
    try:
        store = JobStore(conn, worker_name="w", worker_key="rq:worker:w")
        intake = Intake(conn, store, [INTERACTIVE], ["interactive"], MODEL, 15, 500)
        with Client(server.url()) as client:
            client.submit(["before"], model=MODEL)
        intake.send_ahead(64)
        server.stop(signal.SIGKILL)
        assert intake.ahead and intake.ahead_ready()
        with pytest.raises(redis.ConnectionError):
            intake.take(64, block_s=0.0)
        assert not intake.ahead
        server.start()
        intake.send_ahead(64)
        intake.abandon_ahead()  # what the worker's loop does on a lost connection
        with Client(server.url()) as client:
            client.submit(["after"], model=MODEL)
        until(lambda: bool(intake.take(64, block_s=0.0)), 10, "a take after the restart")
    finally:
        conn.close()
        server.stop()
