"""Supervision, as RELIABILITY.md states it: a killed worker is restarted with capped backoff
under its own name, and the other workers recover its jobs meanwhile.

The product's `Supervisor` runs in its own process (tests/worker/supervised.py) over children
the test chooses, since `vecq worker --gpus` can only start null workers here, whose jobs never
stay in a worker long enough to be stranded by a kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from rq import Worker

from vecq.engines import Embedder
from vecq.producer import Client
from vecq.producer.keys import job_key, result_key, started_key

from .conftest import INTERACTIVE
from .servers import VECQ, stop_process, until

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def _supervise(tmp_path: Path, children: list[dict], cap: float | None = None) -> subprocess.Popen[bytes]:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"cap": cap, "children": children}))
    log = (tmp_path / "supervisor.log").open("ab")
    cmd = [sys.executable, str(HERE / "supervised.py"), str(spec)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _pid_of(conn: redis.Redis, name: str) -> int:
    """The pid of the live rq worker called `name`, 0 if none."""
    return next((int(w.pid or 0) for w in Worker.all(connection=conn) if w.name == name), 0)


def _held_by(conn: redis.Redis, name: str) -> list[str]:
    """Ids of the jobs started in worker `name` and not yet ended."""
    members = [m.decode().split(":")[0] for m in conn.zrange(started_key(INTERACTIVE), 0, -1)]
    return [j for j in members if conn.hget(job_key(j), "worker_name") == name.encode()]


def test_killed_worker_restarts_after_its_backoff_while_the_other_recovers_its_jobs(
    redis_url: str, tmp_path: Path
) -> None:
    """The victim's engine hangs, so the jobs it holds can only ever be finished by the other
    worker; its restart waits out its backoff (8 s), by when they are all written by the peer."""
    conn = redis.Redis.from_url(redis_url)
    backoff = 8.0
    peer = [*VECQ, "worker", "--backend", "null", "--redis", redis_url, "--worker-name", "rec.peer"]
    peer += ["--heartbeat-ttl", "3", "--cleanup-interval", "1"]
    victim = [sys.executable, str(HERE / "slow_worker.py"), redis_url, "600", "rec.victim"]
    sup = _supervise(tmp_path, [{"argv": peer}, {"argv": victim, "backoff": backoff}])
    try:
        until(lambda: _pid_of(conn, "rec.peer") and _pid_of(conn, "rec.victim"), 60, "both registered")
        client = Client(redis_url)
        texts, jobs = [], []
        deadline = time.monotonic() + 30
        while not _held_by(conn, "rec.victim"):  # jobs land one by one; idle workers take in turn
            assert time.monotonic() < deadline, "the victim never took a job"
            texts.append([f"held {len(jobs)} {i}" for i in range(3)])
            jobs.append(client.submit(texts[-1]).id)
            time.sleep(0.02)
        time.sleep(0.3)  # let the victim's take settle: what it holds now is what the kill strands
        held = _held_by(conn, "rec.victim")
        pid = _pid_of(conn, "rec.victim")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        recovered = until(lambda: all(conn.exists(result_key(j)) for j in jobs), 60, "every job written")
        assert _pid_of(conn, "rec.victim") in (0, pid), "the victim was back before its jobs were"
        want = Embedder.load(backend="null")
        for job_id, job_texts in zip(jobs, texts, strict=True):
            np.testing.assert_array_equal(client.result(job_id, timeout=5), want.embed(job_texts))
            assert conn.xlen(result_key(job_id)) == 1
        writers = {conn.xrange(result_key(j))[0][1][b"worker_name"].decode() for j in held}
        assert writers == {"rec.peer"}, f"the victim's jobs {held} were written by {writers}"

        until(lambda: _pid_of(conn, "rec.victim") not in (0, pid), 60, "the victim restarted")
        assert time.monotonic() - killed >= backoff, "restarted before its backoff"
        log = (tmp_path / "supervisor.log").read_text()
        assert "worker 1 exited (code -9) after" in log and f"restarting in {backoff:.0f}s" in log
        print(f"{len(held)} held jobs recovered {recovered:.1f}s after the kill")
    finally:
        code = stop_process(sup, timeout=60)
    assert code == 0, (tmp_path / "supervisor.log").read_text()[-3000:]


def test_restart_delays_double_up_to_the_cap(tmp_path: Path) -> None:
    """A child that dies at once, again and again: the gaps between its starts are its backoff
    (plus up to two 0.2 s supervision ticks), doubling from 0.125 s and then held at the cap (1 s
    here, 30 s in production) — uncapped the sixth and seventh gaps would be 4 and 8 s."""
    starts = tmp_path / "starts"
    crash = ["sh", "-c", f"date +%s.%N >> {starts}; exit 1"]
    sup = _supervise(tmp_path, [{"argv": crash, "backoff": 0.125}], cap=1.0)
    try:
        until(lambda: starts.is_file() and len(starts.read_text().split()) >= 8, 30, "eight starts")
    finally:
        code = stop_process(sup, timeout=30)
    assert code == 0
    times = [float(t) for t in starts.read_text().split()][:8]
    gaps = np.diff(times)
    want = [0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert all(g >= w - 0.01 for g, w in zip(gaps, want, strict=True)), f"gaps {gaps.round(2)}"
    assert max(gaps[5:]) < 3.0, f"not capped: gaps {gaps.round(2)}"
    print(f"gaps between starts {gaps.round(2)}")
    assert (tmp_path / "supervisor.log").read_text().count("exited (code 1)") >= 7
