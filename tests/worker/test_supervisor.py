"""`vecq worker --gpus`: one supervised worker per GPU, restarted when it dies, stopped together.

No GPU is needed: children run the null engine, which only reads `CUDA_VISIBLE_DEVICES` to
name itself.  What is checked is the supervision, against real Redis and real processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import numpy as np
import pytest
import redis
from rq import Worker

from vecq.producer import Client
from vecq.worker.supervisor import NoGPUs, parse_gpus, visible_gpus

from .servers import VECQ, spawn_worker, stop_process, until

pytestmark = pytest.mark.slow


def test_gpu_lists_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_gpus("0, 1,3") == ["0", "1", "3"]
    assert parse_gpus("GPU-3f2a") == ["GPU-3f2a"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_gpus("all") == visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(NoGPUs, match="hides every GPU"):
        visible_gpus()
    for bad, message in [("0,0", "names a GPU twice"), ("x", "not a GPU index"), (",", "names no GPU")]:
        with pytest.raises(ValueError, match=message):
            parse_gpus(bad)


def _workers(conn: redis.Redis, prefix: str) -> dict[str, int]:
    """Live rq workers named `prefix*` → their pids."""
    return {w.name: int(w.pid or 0) for w in Worker.all(connection=conn) if w.name.startswith(prefix)}


def test_one_worker_per_gpu_restarted_when_killed_and_drained_on_sigterm(
    redis_url: str, tmp_path, null_embedder
) -> None:
    conn = redis.Redis.from_url(redis_url)
    log = (tmp_path / "supervisor.log").open("ab")
    cmd = [*VECQ, "worker", "--gpus", "0,1", "--workers-per-gpu", "2", "--backend", "null"]
    cmd += ["--redis", redis_url, "--worker-name", "sup", "--heartbeat-ttl", "3", "--cleanup-interval", "1"]
    sup = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        names = {"sup.gpu0.0", "sup.gpu0.1", "sup.gpu1.0", "sup.gpu1.1"}
        until(lambda: set(_workers(conn, "sup.")) == names, 60, "four workers registered")

        client = Client(redis_url)
        texts = [f"text {i}" for i in range(400)]
        jobs = [client.submit(texts[i : i + 20]) for i in range(0, len(texts), 20)]
        got = np.concatenate([client.result(job, timeout=30) for job in jobs])
        np.testing.assert_array_equal(got, null_embedder.embed(texts))  # each text's own vector

        victim = _workers(conn, "sup.gpu1.0")["sup.gpu1.0"]
        os.kill(victim, signal.SIGKILL)
        until(
            lambda: _workers(conn, "sup.gpu1.0").get("sup.gpu1.0", victim) not in (victim, 0),
            60,
            "the killed worker restarted under a new pid",
        )
        after = client.embed(["after the restart"], timeout=30)
        np.testing.assert_array_equal(after, null_embedder.embed(["after the restart"]))
    finally:
        code = stop_process(sup, timeout=60)
    assert code == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
    until(lambda: not _workers(conn, "sup."), 10, "every worker deregistered")


def test_a_worker_that_cannot_start_stops_the_group_with_code_2(tmp_path) -> None:
    missing = tmp_path / "no-such-bundle"
    proc = subprocess.run(
        [*VECQ, "worker", "--gpus", "0,1", "--bundle", str(missing), "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "stopping all workers" in proc.stderr


def test_a_live_namesake_is_refused_and_a_dead_one_taken_over(redis_url: str, tmp_path) -> None:
    conn = redis.Redis.from_url(redis_url)
    log = tmp_path / "w.log"
    first = spawn_worker(redis_url, log, "--worker-name", "twin")
    try:
        until(lambda: _workers(conn, "twin"), 60, "the first worker registered")
        second = subprocess.run(
            [*VECQ, "worker", "--backend", "null", "--redis", redis_url, "--worker-name", "twin"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert "a live worker is named 'twin'" in second.stderr.strip().splitlines()[-1]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        third = spawn_worker(redis_url, log, "--worker-name", "twin")
        until(lambda: _workers(conn, "twin").get("twin") == third.pid, 60, "the name taken over")
        assert stop_process(third) == 0
    finally:
        stop_process(first)  # `third`, if the wait failed, is killed by the reap_workers fixture


def test_a_name_taken_over_stays_listed_while_rq_lists_workers(redis_conn, make_worker) -> None:
    """rq's `Worker.all` unlists a worker whose key is missing; taking over a dead namesake must
    leave no moment without the key, or a listing at that moment unlists the new worker for good
    (a CI failure: the worker served on, unseen, and took later tests' jobs)."""
    worker = make_worker()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stop = threading.Event()

    def list_workers() -> None:
        while not stop.is_set():
            Worker.all(connection=redis_conn)

    listers = [threading.Thread(target=list_workers, daemon=True) for _ in range(2)]
    for t in listers:
        t.start()
    try:
        for _ in range(100):
            # A namesake on this host whose pid is gone and whose health key has expired.
            redis_conn.hset(worker.key, mapping={"hostname": socket.gethostname(), "pid": dead.pid})
            redis_conn.sadd(Worker.redis_workers_keys, worker.key)
            worker.register_birth()
            assert redis_conn.sismember(Worker.redis_workers_keys, worker.key)
            assert int(redis_conn.hget(worker.key, "pid")) == os.getpid()
    finally:
        stop.set()
        for t in listers:
            t.join(10)
        worker.register_death()
