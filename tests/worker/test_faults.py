"""Fault tests: kill -9 of a worker mid-batch, SIGTERM drain, Redis going away and coming back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from vecq.worker.settings import WorkerSettings
from vecq.worker.worker import BatchWorker

from .conftest import INTERACTIVE, enqueue, vectors_of
from .servers import SPAWNED

SLOW_WORKER = Path(__file__).with_name("slow_worker.py")


def _spawn(url: str, delay: float, name: str, log: Path) -> subprocess.Popen:
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(SLOW_WORKER), url, str(delay), name], stdout=out, stderr=subprocess.STDOUT
    )
    SPAWNED.append(proc)  # reaped after the test even when it fails (a leaked worker took the
    return proc  # next test's jobs)


def _until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _health(conn: redis.Redis, name: str) -> dict:
    raw = conn.get(f"vecq:health:{name}")
    return json.loads(raw) if raw else {}


def _finished(conn: redis.Redis) -> int:
    return conn.zcard(f"rq:finished:{INTERACTIVE}")


def test_kill_9_mid_batch_every_job_finishes_exactly_once(
    redis_conn, redis_url, null_embedder, tmp_path
) -> None:
    batches = [[f"job {j} text {i}" for i in range(3)] for j in range(150)]
    jobs = enqueue(redis_conn, batches, retries=3)
    # slow enough to be seen mid-run: its health record, which the test reads, is written once a
    # second, and at 0.05 s a batch a quick worker had finished all 150 jobs before that
    victim = _spawn(redis_url, 0.3, "victim", tmp_path / "victim.log")
    _until(lambda: _health(redis_conn, "victim").get("open_texts", 0) > 0, 30, "the victim to hold jobs")
    survivor = _spawn(redis_url, 0.05, "survivor", tmp_path / "survivor.log")
    try:
        _until(lambda: _health(redis_conn, "victim").get("finished", 0) > 3, 30, "the victim to be mid-run")
        held = _health(redis_conn, "victim")["open_texts"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        assert held > 0
        took = _until(lambda: _finished(redis_conn) == len(jobs), 60, "every job to finish")
        assert time.monotonic() - killed_at < 30, f"recovery took {took:.1f}s"
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
    for job, texts in zip(jobs, batches, strict=True):
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(texts))
        assert redis_conn.xlen(f"rq:results:{job.id}") == 1  # written once: never done twice
    assert redis_conn.zcard(f"rq:wip:{INTERACTIVE}") == 0
    assert redis_conn.zcard(f"rq:failed:{INTERACTIVE}") == 0
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}:intermediate") == 0


def test_sigterm_drains_and_exits_0(redis_conn, redis_url, null_embedder, tmp_path) -> None:
    batches = [[f"drain {j} {i}" for i in range(2)] for j in range(200)]
    jobs = enqueue(redis_conn, batches)
    proc = _spawn(redis_url, 0.05, "drainer", tmp_path / "drainer.log")
    # the finished registry, not the health record: that one is written once a second, by which
    # time a quick worker may have finished all 200 jobs
    _until(lambda: _finished(redis_conn) > 0, 30, "the worker to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (tmp_path / "drainer.log").read_text()[-2000:]
    done = _finished(redis_conn)
    left = redis_conn.llen(f"rq:queue:{INTERACTIVE}")
    assert 0 < done < len(jobs) and done + left == len(jobs)
    assert redis_conn.zcard(f"rq:wip:{INTERACTIVE}") == 0
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}:intermediate") == 0
    assert redis_conn.zcard(f"rq:failed:{INTERACTIVE}") == 0
    finished = set(redis_conn.zrange(f"rq:finished:{INTERACTIVE}", 0, -1))
    for job, texts in zip(jobs, batches, strict=True):
        if job.id.encode() in finished:
            np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(texts))
    assert redis_conn.exists("rq:worker:drainer") == 0 or redis_conn.hexists("rq:worker:drainer", "death")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    _until(lambda: _pings(port), 10, "redis-server to start")
    return proc


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


def test_redis_restart_worker_backs_off_and_continues(tmp_path, null_embedder) -> None:
    port = _free_port()
    server = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(url)
    worker = BatchWorker.from_settings(WorkerSettings(redis_url=url, backend="null", heartbeat_ttl=3))
    thread = threading.Thread(target=worker.work, daemon=True)
    try:
        first = enqueue(conn, [[f"before {i}"] for i in range(50)])
        thread.start()
        _until(lambda: conn.zcard(f"rq:finished:{INTERACTIVE}") == 50, 30, "the first jobs")
        server.terminate()
        server.wait(10)
        time.sleep(1.5)  # the worker is now retrying with growing waits
        server = _redis_server(port, tmp_path)
        conn = redis.Redis.from_url(url)
        second = enqueue(conn, [[f"after {i}"] for i in range(50)])
        _until(lambda: conn.zcard(f"rq:finished:{INTERACTIVE}") == 100, 60, "the jobs after the restart")
        assert thread.is_alive()
        for job in first + second:
            text = "before" if job in first else "after"
            i = (first + second).index(job) % 50
            np.testing.assert_array_equal(vectors_of(conn, job.id), null_embedder.embed([f"{text} {i}"]))
    finally:
        worker.stop()
        thread.join(15)
        server.terminate()
        server.wait(10)
    assert not thread.is_alive()
