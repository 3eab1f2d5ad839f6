"""Stock `rq info` (rq's own command, no vecq code loaded) shows vecq's queues, workers and failures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Worker

from vecq.producer import Client
from vecq.producer.errors import JobFailed

from .conftest import INTERACTIVE
from .servers import spawn_worker, stop_process, until

pytestmark = pytest.mark.timeout(120)
#: The `rq` console script's own entry point, run by this interpreter (found without PATH).
RQ = [sys.executable, "-c", "from rq.cli import main; main()"]


def _rq_info(redis_url: str, *flags: str) -> list[str]:
    cmd = [*RQ, "info", "--url", redis_url, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_rq_info_lists_vecq_queues_workers_and_failures(redis_url: str, tmp_path: Path) -> None:
    """A live `vecq worker` that finished 5 jobs and failed 2 (an over-size `dimensions`), and
    3 jobs queued for a model nobody serves: `rq info` counts each where rq would."""
    conn = redis.Redis.from_url(redis_url)
    worker = spawn_worker(redis_url, tmp_path / "w.log", "--worker-name", "info-worker")
    try:
        until(lambda: any(w.name == "info-worker" for w in Worker.all(connection=conn)), 60, "the worker")
        client = Client(redis_url)
        for i in range(5):
            assert client.embed([f"served {i}", "and another"], timeout=30).shape == (2, 384)
        for _ in range(2):
            with pytest.raises(JobFailed, match="dimensions: 100000 is over the model's 384"):
                client.embed(["too many dimensions"], dimensions=100_000, timeout=30)
        for i in range(3):
            client.submit([f"waiting {i}"], model="unserved-model")

        raw = _rq_info(redis_url, "--raw")
        queues = {x.split()[1]: x for x in raw if x.startswith("queue ")}
        assert set(queues) == {INTERACTIVE, "vecq.unserved-model.interactive"}, raw
        assert queues[INTERACTIVE] == f"queue {INTERACTIVE} 0, 0 executing, 5 finished, 2 failed"
        unserved = queues["vecq.unserved-model.interactive"]
        assert unserved == "queue vecq.unserved-model.interactive 3, 0 executing, 0 finished, 0 failed"
        (line,) = [x for x in raw if x.startswith("worker ")]
        assert line.startswith("worker info-worker (") and f" {worker.pid}) idle " in line, line
        assert line.endswith(f"idle {INTERACTIVE}, vecq.all-minilm-l6-v2.bulk. jobs: 5 finished, 2 failed")

        charts = _rq_info(redis_url)  # the default view, bar charts and totals
        assert "2 queues, 3 jobs total" in charts and "1 workers, 2 queues" in charts, charts
    finally:
        assert stop_process(worker) == 0
    assert not [x for x in _rq_info(redis_url, "--raw") if x.startswith("worker ")]  # deregistered


def test_rq_state_says_busy_through_a_bulk_run_and_idle_after(redis_url: str, tmp_path: Path) -> None:
    """rq's worker state (`rq info`, `vecq status`): busy while a bulk run holds the worker (it
    is written after `BUSY_AFTER_S` of work, so a lone query's few milliseconds cost no write),
    idle again once the run is done."""
    conn = redis.Redis.from_url(redis_url)
    worker = spawn_worker(redis_url, tmp_path / "w.log", "--worker-name", "state-worker")
    key = "rq:worker:state-worker"
    try:
        until(lambda: conn.hget(key, "state") == b"idle", 60, "the worker, idle")
        client = Client(redis_url)
        assert client.embed(["a lone query"], timeout=30).shape == (1, 384)
        jobs = [client.submit([f"bulk {i} text {j}" for j in range(2000)], lane="bulk") for i in range(40)]
        seen = set()
        for job in jobs:
            while job.get_status(refresh=True) not in ("finished", "failed"):
                seen.add(conn.hget(key, "state"))
                time.sleep(0.002)
        assert all(client.result(job).shape == (2000, 384) for job in jobs)
        assert b"busy" in seen, seen
        until(lambda: conn.hget(key, "state") == b"idle", 10, "idle after the run")
    finally:
        assert stop_process(worker) == 0
