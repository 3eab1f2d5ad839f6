"""Recovery (worker/recovery.py) of jobs whose worker died, observed on the jobs themselves.

- a job in flight in more worker deaths than it has rq retries fails with `AbandonedJobError`
  (rq's started-registry cleanup, run by vecq every `cleanup_interval`), and not before;
- a job a stock rq worker moved to the intermediate list and never started is put back at the
  front of its queue, after two sightings `stranded_after` apart, and then served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import redis
from rq import Queue
from rq.results import Result

from vecq.producer.keys import intermediate_key, queue_key

from .conftest import INTERACTIVE, enqueue, result_of, run, vectors_of
from .servers import SPAWNED, spawn_worker, stop_process, until

QUEUE, STARTED, FAILED = queue_key(INTERACTIVE), f"rq:wip:{INTERACTIVE}", f"rq:failed:{INTERACTIVE}"


def _hung_worker(url: str, log: Path, name: str) -> subprocess.Popen[bytes]:
    """tests/worker/slow_worker.py with a 600 s engine call: it takes jobs, heartbeats them and
    never finishes one (heartbeat TTL 3 s, recovery every 1 s)."""
    script = Path(__file__).with_name("slow_worker.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), url, "600", name], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    SPAWNED.append(proc)  # killed by the reap_workers fixture if the test fails first
    return proc


def _held_by(conn: redis.Redis, job_id: str, name: str) -> bool:
    """`name` has started the job and its execution is in the started registry."""
    status, owner = conn.hmget(f"rq:job:{job_id}", "status", "worker_name")
    in_registry = any(m.startswith(f"{job_id}:".encode()) for m in conn.zrange(STARTED, 0, -1))
    return status == b"started" and owner == name.encode() and in_registry


def test_a_job_that_dies_in_more_workers_than_it_has_retries_fails_abandoned(redis_url, tmp_path) -> None:
    conn = redis.Redis.from_url(redis_url)
    job = enqueue(conn, [["dies in every worker"]], retries=1)[0]
    for name, retries_left in (("first", b"1"), ("second", b"0")):
        proc = _hung_worker(redis_url, tmp_path / f"{name}.log", name)
        # the second one gets the job only through recovery: its retry put it back on the queue
        until(lambda: _held_by(conn, job.id, name), 60, f"worker {name} to hold the job")  # noqa: B023
        assert conn.hget(job.key, "retries_left") == retries_left
        assert conn.xlen(f"rq:results:{job.id}") == 0  # neither finished nor failed so far
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # a worker that serves: had the job been retried a third time, it would finish it
    survivor = spawn_worker(redis_url, tmp_path / "survivor.log")
    try:
        until(lambda: conn.hget(job.key, "status") in (b"failed", b"finished"), 60, "the job's end")
        assert conn.hget(job.key, "status") == b"failed"
        assert stop_process(survivor) == 0
    finally:
        stop_process(survivor, 5)
    res = result_of(conn, job.id)
    assert res is not None and res.type == Result.Type.FAILED
    assert res.exc_string.startswith("Moved to FailedJobRegistry, due to AbandonedJobError, at "), (
        res.exc_string
    )
    assert conn.xlen(f"rq:results:{job.id}") == 1  # the failure, and no result
    assert conn.zrange(FAILED, 0, -1) == [job.id.encode()]
    assert conn.zcard(STARTED) == 0 and conn.llen(QUEUE) == 0


def _strand(conn: redis.Redis, texts: list[str]) -> str:
    """A job that a stock rq worker took (rq's own LMOVE into the intermediate list) and died
    before starting."""
    job = enqueue(conn, [texts])[0]
    assert Queue.lmove(conn, QUEUE, None) == (QUEUE, job.id.encode())
    return job.id


def test_a_stranded_job_is_put_back_at_the_front_and_served(redis_conn, make_worker, null_embedder) -> None:
    stranded = _strand(redis_conn, ["stranded"])
    queued = [j.id for j in enqueue(redis_conn, [["queued 0"], ["queued 1"]])]
    worker = make_worker(stranded_after=2.0)
    recovery, inter = worker.serving.recovery, intermediate_key(INTERACTIVE)
    assert recovery.put_back_stranded(INTERACTIVE, now=1000.0) == 0  # first seen
    assert recovery.put_back_stranded(INTERACTIVE, now=1001.9) == 0  # not yet: maybe a live taker
    assert redis_conn.lrange(inter, 0, -1) == [stranded.encode()]
    assert recovery.put_back_stranded(INTERACTIVE, now=1002.0) == 1
    assert redis_conn.lrange(inter, 0, -1) == []
    assert redis_conn.lrange(QUEUE, 0, -1) == [j.encode() for j in (stranded, *queued)]  # at the front
    run(worker)
    for job_id, texts in ((stranded, ["stranded"]), (queued[0], ["queued 0"]), (queued[1], ["queued 1"])):
        np.testing.assert_array_equal(vectors_of(redis_conn, job_id), null_embedder.embed(texts))
        assert redis_conn.xlen(f"rq:results:{job_id}") == 1
    assert redis_conn.hget(f"rq:job:{stranded}", "retries_left") == b"2"  # no work lost: no retry spent
    assert redis_conn.zcard(FAILED) == 0 and redis_conn.zcard(STARTED) == 0


def test_a_serving_worker_puts_a_stranded_job_back_by_itself(redis_url, tmp_path, null_embedder) -> None:
    """The same through a `vecq worker` process: its periodic recovery finds the job, puts it
    back and serves it, with one line saying so."""
    conn = redis.Redis.from_url(redis_url)
    stranded = _strand(conn, ["left by a stock rq worker"])
    log = tmp_path / "worker.log"
    proc = spawn_worker(redis_url, log, "--stranded-after", "1")
    try:
        until(lambda: conn.hget(f"rq:job:{stranded}", "status") == b"finished", 60, "the job served")
        assert stop_process(proc) == 0
    finally:
        stop_process(proc, 5)
    want = null_embedder.embed(["left by a stock rq worker"])
    np.testing.assert_array_equal(vectors_of(conn, stranded), want)
    assert conn.llen(intermediate_key(INTERACTIVE)) == 0 and conn.xlen(f"rq:results:{stranded}") == 1
    assert "1 job(s) stranded in the intermediate list put back" in log.read_text()
