"""Reliability (issue 5), worker deaths: kill -9 during a 100k-text `vecq embed`, a second SIGTERM,
an engine call that hangs past the watchdog.  Each test runs its own redis-server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from .conftest import BULK, INTERACTIVE, enqueue, vectors_of
from .servers import VECQ, RedisServer, spawn_worker, stop_process, until

CORPUS = 100_000
KILLS = 10


def _corpus(path: Path, n: int) -> list[str]:
    texts = [f"text {i} " + "lorem ipsum " * (i % 11) for i in range(n)]
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    return texts


def _held_by(conn: redis.Redis, worker: str) -> set[bytes]:
    """Ids of the jobs in the bulk started registry that `worker` started (the take sets it)."""
    ids = {m.rsplit(b":", 1)[0] for m in conn.zrange(f"rq:wip:{BULK}", 0, -1)}
    return {i for i in ids if conn.hget(b"rq:job:" + i, "worker_name") == worker.encode()}


def _busy(conn: redis.Redis, names: list[str], timeout: float = 30.0) -> list[int]:
    """Indexes of the workers holding jobs right now, once there is one (a restarted worker
    first has to come up and take some)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [j for j, n in enumerate(names) if _held_by(conn, n)]
        if busy:
            return busy
        time.sleep(0.005)
    pytest.fail(f"no worker held a job for {timeout}s")


def _recovered(conn: redis.Redis, job_id: bytes, victim: str) -> bool:
    """Done (bulk deleted it after use, or finished) or started by another worker."""
    status, owner = conn.hmget(b"rq:job:" + job_id, "status", "worker_name")
    return status is None or status == b"finished" or owner != victim.encode()


@pytest.mark.slow
def test_kill_9_ten_times_during_bulk_embed_loses_and_duplicates_nothing(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    texts = _corpus(tmp_path / "corpus.jsonl", CORPUS)
    out = tmp_path / "out.parquet"
    rng = random.Random(5)
    names = ["w0", "w1"]
    workers = [spawn_worker(server.url(), tmp_path / f"{n}.log", "--worker-name", n) for n in names]
    cmd = [*VECQ, "embed", str(tmp_path / "corpus.jsonl"), "--out", str(out), "--id-field", "id"]
    embed = subprocess.Popen(
        [*cmd, "--redis", server.url()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VECQ_JOB_RETRIES": "20"},  # a job must outlive every kill it sees
    )
    pending: list[tuple[float, str, set[bytes]]] = []  # (killed at, victim, its jobs)
    recovery: list[float] = []
    held: list[int] = []

    def poll() -> None:
        for entry in list(pending):
            killed_at, victim, jobs = entry
            if all(_recovered(conn, j, victim) for j in jobs):
                recovery.append(time.monotonic() - killed_at)
                pending.remove(entry)

    try:
        until(lambda: conn.zcard(f"rq:wip:{BULK}") > 0, 60, "the workers to start jobs")
        for k in range(KILLS):
            end = time.monotonic() + rng.uniform(0.2, 1.5)
            while time.monotonic() < end:
                poll()
                time.sleep(0.05)
            assert embed.poll() is None, f"the run ended after {k} kills: slow it down"
            # a worker that holds jobs right now (a kill of an idle one would test nothing);
            # a restarted one first has to come up and take some
            i = rng.choice(_busy(conn, names))
            os.kill(workers[i].pid, signal.SIGKILL)
            workers[i].wait(10)
            jobs = _held_by(conn, names[i])
            held.append(len(jobs))
            pending.append((time.monotonic(), names[i], jobs))
            names[i] = f"w{i}-{k}"
            workers[i] = spawn_worker(server.url(), tmp_path / f"w{i}.log", "--worker-name", names[i])
        until(lambda: (poll(), not pending)[1], 60, "every killed worker's jobs to be recovered")
        stdout, _ = embed.communicate(timeout=240)
        assert embed.returncode == 0, stdout.decode()[-3000:]
        # the last restarted worker must be up (its SIGTERM handler installed) before the stop
        until(lambda: all(conn.exists(f"vecq:health:{n}") for n in names), 60, "both workers serving")
    finally:
        if embed.poll() is None:
            embed.kill()
        codes = [stop_process(w) for w in workers]
        server.stop()
    assert codes == [0, 0]
    assert len(recovery) == KILLS and max(recovery) < 30, recovery
    assert sum(held) > 0 and sum(1 for h in held if h) >= KILLS // 2, held
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(CORPUS))  # every row once, in order
    got = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, null_embedder.embed(texts))
    print(f"held per kill {held}; recovery seconds {[round(r, 1) for r in recovery]}")


def _slow_worker(
    url: str, log: Path, delay: float, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """tests/worker/slow_worker.py: the null engine, `delay` seconds per engine call."""
    script = Path(__file__).with_name("slow_worker.py")
    cmd = [sys.executable, str(script), url, str(delay), name]
    return subprocess.Popen(
        cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def test_second_sigterm_exits_at_once_and_its_jobs_are_retried(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    batches = [[f"twice {j} {i}" for i in range(4)] for j in range(60)]
    jobs = enqueue(conn, batches, retries=2)
    # each engine call takes 120 s: a worker that waited for its batch (what the first SIGTERM
    # asks) would still be running long after the 20 s this test gives it to exit
    proc = _slow_worker(server.url(), tmp_path / "slow.log", 120.0, "slow")
    try:
        until(lambda: conn.zcard(f"rq:wip:{INTERACTIVE}") > 0, 30, "the worker to start jobs")
        time.sleep(0.5)  # mid-batch
        os.kill(proc.pid, signal.SIGTERM)
        until(lambda: "draining" in (tmp_path / "slow.log").read_text(), 10, "the first SIGTERM's drain")
        assert proc.poll() is None  # the first signal waits for the batch
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 20 s after the second SIGTERM: it waited for the batch")
        assert code != 0
        log = (tmp_path / "slow.log").read_text()
        assert "second signal, exiting now" in log
        # it left without writing what it held: nothing finished, all still started, for recovery
        assert conn.zcard(f"rq:finished:{INTERACTIVE}") == 0 and conn.zcard(f"rq:wip:{INTERACTIVE}") > 0
        survivor = spawn_worker(server.url(), tmp_path / "survivor.log")
        until(lambda: conn.zcard(f"rq:finished:{INTERACTIVE}") == len(jobs), 60, "every job to finish")
        assert stop_process(survivor) == 0
        for job, texts in zip(jobs, batches, strict=True):
            np.testing.assert_array_equal(vectors_of(conn, job.id), null_embedder.embed(texts))
            assert conn.xlen(f"rq:results:{job.id}") == 1
        assert conn.zcard(f"rq:wip:{INTERACTIVE}") == 0 and conn.zcard(f"rq:failed:{INTERACTIVE}") == 0
    finally:
        stop_process(proc, 5)
        server.stop()


def test_sigterm_mid_batch_writes_the_batch_and_exits_0(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    jobs = enqueue(conn, [[f"drain {j}"] for j in range(20)])
    proc = _slow_worker(server.url(), tmp_path / "slow.log", 2.0, "drainer")
    try:
        until(lambda: conn.zcard(f"rq:wip:{INTERACTIVE}") > 0, 30, "the worker to start jobs")
        time.sleep(0.3)  # the first engine call (2 s) is running
        started = conn.zcard(f"rq:wip:{INTERACTIVE}")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        finished = conn.zcard(f"rq:finished:{INTERACTIVE}")
        assert finished >= started > 0  # what it held was written, not dropped
        assert finished + conn.llen(f"rq:queue:{INTERACTIVE}") == len(jobs)
        assert conn.zcard(f"rq:wip:{INTERACTIVE}") == 0 and conn.zcard(f"rq:failed:{INTERACTIVE}") == 0
        ids = [job.id for job in jobs]
        for j in conn.zrange(f"rq:finished:{INTERACTIVE}", 0, -1):
            expected = null_embedder.embed([f"drain {ids.index(j.decode())}"])
            np.testing.assert_array_equal(vectors_of(conn, j.decode()), expected)
    finally:
        stop_process(proc, 5)
        server.stop()


def test_hung_engine_call_exits_non_zero_and_its_jobs_finish_elsewhere(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    batches = [[f"hang {j}"] for j in range(10)]
    jobs = enqueue(conn, batches, retries=1)
    hung = _slow_worker(server.url(), tmp_path / "hung.log", 600.0, "hung", {"VECQ_ENGINE_TIMEOUT": "2"})
    try:
        until(lambda: conn.zcard(f"rq:wip:{INTERACTIVE}") > 0, 30, "the worker to start jobs")
        t0 = time.monotonic()
        code = hung.wait(20)
        assert code != 0 and 2.0 <= time.monotonic() - t0 < 10.0
        log = (tmp_path / "hung.log").read_text()
        assert "over engine_timeout=2s; exiting so that its" in log, log[-2000:]
        survivor = spawn_worker(server.url(), tmp_path / "survivor.log")
        until(lambda: conn.zcard(f"rq:finished:{INTERACTIVE}") == len(jobs), 60, "every job to finish")
        assert stop_process(survivor) == 0
        for job, texts in zip(jobs, batches, strict=True):
            np.testing.assert_array_equal(vectors_of(conn, job.id), null_embedder.embed(texts))
            assert conn.hget(job.key, "retries_left") == b"0"  # the hung attempt cost one retry
        assert conn.zcard(f"rq:wip:{INTERACTIVE}") == 0 and conn.zcard(f"rq:failed:{INTERACTIVE}") == 0
    finally:
        stop_process(hung, 5)
        server.stop()
