"""Reliability (issue 5), bounded resources: worker RSS flat over a long bulk run, Redis keys
bounded while it runs and gone after it, TTLs honoured, prefetch capping what a worker holds
whatever the queue length.  (1M texts: benchmarks/probes/rss_over_texts.py, numbers in BENCHMARKS.md.)"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from vecq.producer import Client, ProducerSettings
from vecq.producer.bulk import BulkSubmitter

from .conftest import BULK, MODEL
from .servers import RedisServer, spawn_worker, stop_process, until


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.slow
def test_rss_flat_and_keys_bounded_over_a_bulk_run(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    worker = spawn_worker(server.url(), tmp_path / "worker.log")
    n, window = 120_000, 8192
    rss: dict[int, float] = {}
    max_keys = 0
    try:
        with Client(server.url()) as client:
            bulk = BulkSubmitter(client, run_id="rss", chunk_size=256, window=window)
            done = 0
            texts = (f"rss text {i} " + "lorem " * (i % 9) for i in range(n))
            for chunk, vectors in bulk.run(texts):
                if chunk == 7:  # spot check: rows are the right vectors
                    expected = null_embedder.embed(
                        [f"rss text {i} " + "lorem " * (i % 9) for i in range(1792, 2048)]
                    )
                    np.testing.assert_array_equal(vectors, expected)
                done += len(vectors)
                max_keys = max(max_keys, conn.dbsize())
                for mark in (30_000, 120_000):
                    if done >= mark and mark not in rss:
                        rss[mark] = rss_mb(worker.pid)
        left = sorted(k.decode() for k in conn.keys("*"))
        assert stop_process(worker) == 0
    finally:
        stop_process(worker)
        server.stop()
    growth = rss[120_000] - rss[30_000]
    assert growth < 15.0, f"worker RSS grew {growth:.1f} MB from 30k to 120k texts ({rss})"
    # in flight: window/chunk jobs x (job hash + result) + registries, queues, worker keys
    assert max_keys <= 2 * (window // 256) + 20, max_keys
    assert not [k for k in left if k.startswith(("rq:job:", "rq:results:", "rq:executions:"))], left


def test_results_and_jobs_expire_per_their_ttls(tmp_path, null_embedder) -> None:
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    worker = spawn_worker(server.url(), tmp_path / "worker.log")
    try:
        settings = ProducerSettings(result_ttl=2, failure_ttl=3)
        with Client(server.url(), settings=settings) as client:
            ok = [client.submit([f"short-lived {i}"], model=MODEL) for i in range(20)]
            for job in ok:
                np.testing.assert_array_equal(
                    client.result(job, timeout=30), null_embedder.embed([job.args[0][0]])
                )
            bad = client.submit(["word " * 600], model=MODEL, truncate=False)  # TextTooLong in the worker
            until(lambda: conn.hget(bad.key, "status") == b"failed", 30, "the bad job to fail")
        assert all(0 < conn.ttl(f"rq:results:{j.id}") <= 2 and 0 < conn.ttl(j.key) <= 2 for j in ok)
        assert 0 < conn.ttl(bad.key) <= 3 and 0 < conn.ttl(f"rq:results:{bad.id}") <= 3
        time.sleep(3.5)
        assert [j for j in ok if conn.exists(j.key, f"rq:results:{j.id}")] == []
        assert conn.exists(bad.key, f"rq:results:{bad.id}") == 0
        assert stop_process(worker) == 0
    finally:
        stop_process(worker)
        server.stop()


def test_prefetch_caps_what_a_worker_holds_whatever_the_queue(tmp_path) -> None:
    """Small jobs first (the worker learns ~5 texts per job), then 400-text jobs: what the
    worker holds -- open jobs and done ones not yet written -- stays within the prefetch budget
    (texts counted per job) plus one job."""
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    try:
        with Client(server.url()) as client:
            for j in range(200):
                client.submit([f"small {j} {i}" for i in range(5)], lane="bulk")
            for j in range(100):
                client.submit([f"big {j} {i}" for i in range(400)], lane="bulk")
        worker = spawn_worker(server.url(), tmp_path / "worker.log", "--prefetch-texts", "500")
        held: list[int] = []

        def drained() -> bool:
            ids = [m.rsplit(b":", 1)[0] for m in conn.zrange(f"rq:wip:{BULK}", 0, -1)]
            held.append(sum(int(conn.hget(b"rq:job:" + i, "vecq_texts") or 0) for i in ids))
            return conn.zcard(f"rq:finished:{BULK}") == 300

        until(drained, 120, "the 41,000 queued texts to be done", step=0.005)
        assert stop_process(worker) == 0
        assert conn.llen(f"rq:queue:{BULK}") == 0
    finally:
        server.stop()
    # in the started registry: what the worker holds, its finishing thread's backlog included
    # (a loaded machine once put 1,600 texts there when that backlog was not counted)
    assert len(held) > 20 and 0 < max(held) <= 500 + 400, (len(held), max(held))
