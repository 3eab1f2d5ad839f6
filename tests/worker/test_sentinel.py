"""Redis high availability through Sentinel: a primary, a replica and one sentinel of the test's
own; the primary is killed (SIGKILL) in the middle of a bulk run, the sentinel promotes the
replica, and the worker and the producer follow it to the new primary."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vecq.producer import AsyncClient, Client, JobTimeout, ProducerSettings
from vecq.producer.bulk import BulkSubmitter

from .conftest import MODEL
from .servers import VECQ, RedisServer, SentinelServer, spawn_worker, stop_process, until

DATA_PW = "d4ta-pw-7"
SENTINEL_PW = "s3ntinel-pw-5"
CHUNK = 50


def _replica_of(primary: RedisServer, workdir: Path) -> RedisServer:
    args = ["--replicaof", "127.0.0.1", str(primary.port), "--masterauth", DATA_PW]
    replica = RedisServer(workdir, args, password=DATA_PW).start()
    until(
        lambda: replica.admin().info("replication")["master_link_status"] == "up", 15, "the replica to sync"
    )
    return replica


def _sees(sentinel: SentinelServer, replica: RedisServer) -> bool:
    """The sentinel has the replica's INFO and its link to the primary is up: it can promote it."""
    return any(
        r["port"] == replica.port and not r["is_disconnected"] and r["master-link-status"] == "ok"
        for r in sentinel.admin().sentinel_slaves(sentinel.service)
    )


def _watch_switch(sentinel: SentinelServer, to_port: int, since: float, out: list[float]) -> threading.Thread:
    """Record the seconds from `since` until the sentinel names the replica as primary."""

    def watch() -> None:
        while time.monotonic() - since < 30 and not out:
            if sentinel.primary_port() == to_port:
                out.append(time.monotonic() - since)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _bulk(
    client: Client, texts: list[str], kill: Callable[[], None], log: Path
) -> tuple[dict[int, np.ndarray], int]:
    """Every chunk's vectors, calling `kill()` once a quarter of them are in.  A chunk whose enqueue
    the dead primary acknowledged but never replicated would stall the run: then it is submitted
    again under the same run id, which adopts every job that survived (`resubmits` counts that)."""
    got: dict[int, np.ndarray] = {}
    resubmits = 0
    for _attempt in range(3):
        submitter = BulkSubmitter(
            client, run_id="failover", model=MODEL, chunk_size=CHUNK, window=400, stall_timeout=12
        )
        try:
            for chunk, vectors in submitter.run(texts, skip=set(got)):
                got[chunk] = vectors
                if len(got) == len(texts) // CHUNK // 4:
                    kill()
            return got, resubmits
        except JobTimeout:
            resubmits += 1
    tail = "\n".join(log.read_text().splitlines()[-20:])
    pytest.fail(
        f"bulk run still stalled after {resubmits} resubmissions ({len(got)} chunks in); worker log:\n{tail}"
    )


@pytest.mark.slow
def test_primary_killed_mid_run_the_replica_is_promoted_and_the_run_finishes(tmp_path, null_embedder) -> None:
    for name in ("primary", "replica", "sentinel"):
        (tmp_path / name).mkdir()
    primary = RedisServer(tmp_path / "primary", password=DATA_PW).start()
    replica = _replica_of(primary, tmp_path / "replica")
    sentinel = SentinelServer(tmp_path / "sentinel", password=SENTINEL_PW, primary=primary).start()
    worker = None
    try:
        until(lambda: _sees(sentinel, replica), 15, "the sentinel to see the replica, linked")
        url = sentinel.sentinel_url()
        worker = spawn_worker(url, tmp_path / "worker.log", "--worker-name", "w", "--prefetch-texts", "256")
        texts = [f"failover text {i} " + "word " * (i % 7) for i in range(4000)]
        # Patience for a failover: 120 attempts, waits capped at 0.25 s (about 30 s in all).
        settings = ProducerSettings(redis_url=url, connect_attempts=120, retry_backoff_cap=0.25)
        switched: list[float] = []
        watchers: list[threading.Thread] = []

        def kill() -> None:
            assert not watchers, "the primary is killed once"
            primary.stop(signal.SIGKILL)
            watchers.append(_watch_switch(sentinel, replica.port, time.monotonic(), switched))

        with Client(url, settings=settings) as client:
            assert client.embed(["before"], model=MODEL, timeout=30).shape == (1, null_embedder.dim)
            started = time.monotonic()
            got, resubmits = _bulk(client, texts, kill, tmp_path / "worker.log")
            run_s = time.monotonic() - started
            late = client.embed(["after the failover"], model=MODEL, timeout=30)
        np.testing.assert_array_equal(late, null_embedder.embed(["after the failover"]))
        assert sorted(got) == list(range(len(texts) // CHUNK))  # none missing
        vectors = np.concatenate([got[c] for c in sorted(got)])
        np.testing.assert_array_equal(vectors, null_embedder.embed(texts))
        assert len(watchers) == 1, "the primary was never killed"
        watchers[0].join(30)
        assert switched, "the sentinel never named the replica as primary"
        assert replica.admin().info("replication")["role"] == "master"
        print(
            f"failover: sentinel switched after {switched[0]:.1f}s; run {run_s:.1f}s; resubmits {resubmits}"
        )

        async def embed_async() -> np.ndarray:
            async with AsyncClient(url, settings=settings) as aclient:
                return await aclient.embed(["async, new primary"], model=MODEL, timeout=30)

        np.testing.assert_array_equal(asyncio.run(embed_async()), null_embedder.embed(["async, new primary"]))
        health = subprocess.run([*VECQ, "health", "--redis", url], capture_output=True, timeout=60)
        assert health.returncode == 0, health.stderr.decode()
        status = subprocess.run(
            [*VECQ, "status", "--redis", url, "--sample", "0.1"], capture_output=True, timeout=60
        )
        assert status.returncode == 0, status.stderr.decode()
        shown = status.stdout.decode()
        assert f"redis+sentinel://:***@127.0.0.1:{sentinel.port}/vecq/0?sentinel_password=***" in shown
        assert worker.poll() is None  # it rode out the failover
        log = (tmp_path / "worker.log").read_text()
        assert "Redis is back after" in log
        assert not any(pw in log + shown for pw in (DATA_PW, SENTINEL_PW))
    finally:
        code = stop_process(worker) if worker is not None else None
        for server in (sentinel, replica, primary):
            server.stop()
    assert code == 0
