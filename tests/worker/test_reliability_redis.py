"""Reliability (issue 5), Redis going away: restarts with AOF (`appendfsync everysec`) in the middle
of a bulk run and interactive traffic, and a Redis that is not up yet when the worker starts."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.results import Result

from vecq.producer import Client
from vecq.producer.serializer import MsgpackSerializer
from vecq.worker.worker import BatchWorker

from .conftest import BULK, INTERACTIVE, MODEL, enqueue, result_of, run, vectors_of
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
    from vecq.worker.takepolicy import Take

    server = RedisServer(tmp_path, password="pw-ahead").start()
    conn = redis.Redis.from_url(server.url())
    try:
        store = JobStore(conn, worker_name="w", worker_key="rq:worker:w")
        intake = Intake(conn, store, [INTERACTIVE], model=MODEL, heartbeat_ttl=15)
        with Client(server.url()) as client:
            client.submit(["before"], model=MODEL)
        intake.send_ahead(64)
        server.stop(signal.SIGKILL)
        assert intake.ahead and intake.ahead_ready()
        with pytest.raises(redis.ConnectionError):
            intake.take(Take(64))
        assert not intake.ahead
        server.start()
        intake.send_ahead(64)
        intake.abandon_ahead()  # what the worker's loop does on a lost connection
        with Client(server.url()) as client:
            client.submit(["after"], model=MODEL)
        until(lambda: bool(intake.take(Take(64))), 10, "a take after the restart")
    finally:
        conn.close()
        server.stop()


class _CutReply:
    """Drops the connection at the `k`-th reply read in this process (with `worker`: while its
    loop runs): the command ran in Redis, its reply is lost -- what a primary dying or a network
    cut does at the worst moment.  A worker's start-up and shutdown are left out (a worker that
    cannot register exits non-zero for its supervisor to restart)."""

    def __init__(self, k: int, worker: BatchWorker | None = None) -> None:
        self.k, self.calls, self.cut, self.armed = k, 0, False, worker is None
        self._lock = threading.Lock()
        self._real = redis.connection.AbstractConnection.read_response
        if worker is None:
            return
        loop = worker._loop

        def armed_loop(burst: bool) -> None:
            self.armed = True
            try:
                loop(burst)
            finally:
                self.armed = False

        worker._loop = armed_loop  # type: ignore[method-assign]

    def __enter__(self) -> _CutReply:
        cutter = self

        def read_response(conn, *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(threading.current_thread(), redis.client.PubSubWorkerThread):
                return cutter._real(conn, *args, **kwargs)  # rq's command channel: not the worker's loop
            with cutter._lock:
                cutter.calls += cutter.armed
                now = cutter.armed and cutter.calls == cutter.k
            if now:
                cutter.cut = True
                reply = cutter._real(conn, *args, **kwargs)  # Redis ran it and answered...
                conn.disconnect()  # ...and the answer never arrives
                raise redis.ConnectionError(f"test: connection cut at reply {cutter.k} ({reply!r:.40})")
            return cutter._real(conn, *args, **kwargs)

        redis.connection.AbstractConnection.read_response = read_response  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.read_response = self._real  # type: ignore[method-assign]


def _enqueue_mix(conn: redis.Redis, texts: list[list[str]]) -> tuple[list, list]:
    """The jobs of `texts` (bulk and interactive) and two bad ones (another model's) among them."""
    good = enqueue(conn, texts[::2], queue=BULK, lane="bulk", retries=3)
    bad = enqueue(conn, [["not mine"], ["nor this"]], queue=BULK, lane="bulk", model="other-model")
    good += enqueue(conn, texts[1::2], retries=3)
    return good, bad


def _round_trips(make_worker, redis_conn, texts: list[list[str]]) -> int:
    _enqueue_mix(redis_conn, texts)
    worker = make_worker(prefetch_texts=24)
    with _CutReply(0, worker) as counter:
        run(worker)
    return counter.calls


@pytest.mark.slow
def test_a_connection_cut_at_any_reply_loses_no_job_and_does_none_twice(
    make_worker, redis_conn, null_embedder
) -> None:
    """Whichever reply of a worker's run is lost -- a take's, a finish's, a refusal's, a
    heartbeat's, the worker state's -- every job still ends exactly once, finished with its own
    vectors or (a bad one) failed: the worker keeps what it holds consistent across the lost
    connection (it once left two jobs open but never run, heartbeated forever, when the reply
    after a take was the one cut), and what it lost track of is retried by recovery."""
    texts = [[f"cut {j} text {i}" for i in range(1 + j % 5)] for j in range(24)]
    trips = _round_trips(make_worker, redis_conn, texts)
    assert trips > 10
    for k in range(1, trips + 1):
        redis_conn.flushdb()
        good, bad = _enqueue_mix(redis_conn, texts)
        worker = make_worker(prefetch_texts=24)
        with _CutReply(k, worker) as cut:
            run(worker, timeout=30)  # a job held but never run would keep this burst worker going
        assert cut.cut or cut.calls < k
        # What the cut left started in Redis but unknown to the worker: recovery's TTL, now.
        for queue in (BULK, INTERACTIVE):
            registry = StartedJobRegistry(queue, connection=redis_conn, serializer=MsgpackSerializer)
            registry.cleanup(timestamp=time.time() + 3600)
        run(make_worker(prefetch_texts=24), timeout=30)
        left = [key for key in redis_conn.keys("rq:wip:*") if redis_conn.zcard(key)]
        assert not left, f"cut at reply {k}: jobs left started"
        for job in good + bad:
            assert redis_conn.xlen(f"rq:results:{job.id}") == 1, f"cut at reply {k}: job {job.id}"
        for job, t in zip(good, texts[::2] + texts[1::2], strict=True):
            np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(t))
        for job in bad:
            assert result_of(redis_conn, job.id).type == Result.Type.FAILED


@pytest.mark.slow
def test_a_bulk_run_cut_at_any_reply_yields_every_chunk_once(tmp_path, redis_url, null_embedder) -> None:
    """The producer's side: a `BulkSubmitter` run (statuses, the enqueue script, XREAD of results,
    deletes) whose connection is cut at each reply in turn still yields every chunk exactly once
    with its own vectors, and leaves none of its jobs or results behind."""
    from vecq.producer import ProducerSettings
    from vecq.producer.bulk import BulkSubmitter

    texts = [f"bulk cut {i} " + "word " * (i % 6) for i in range(240)]
    expected = null_embedder.embed(texts)
    worker = spawn_worker(redis_url, tmp_path / "worker.log", "--worker-name", "cut-bulk")
    settings = ProducerSettings(redis_url=redis_url, connect_attempts=10, retry_backoff_cap=0.05)

    def bulk(k: int) -> tuple[_CutReply, list[int], np.ndarray]:
        with Client(redis_url, settings=settings) as client, _CutReply(k) as cut:
            submitter = BulkSubmitter(client, run_id=f"cut-{k}", model=MODEL, chunk_size=40, window=80)
            got = list(submitter.run(texts))
        order = [chunk for chunk, _ in got]
        vectors = np.concatenate([v for _, v in sorted(got, key=lambda cv: cv[0])])
        return cut, order, vectors

    try:
        trips = bulk(0)[0].calls
        assert trips > 15
        conn = redis.Redis.from_url(redis_url)
        for k in range(1, trips + 1):
            cut, order, vectors = bulk(k)
            assert cut.cut or cut.calls < k
            assert sorted(order) == list(range(6)), f"cut at reply {k}: chunks {order}"
            np.testing.assert_array_equal(vectors, expected)
            left = conn.keys(f"rq:*vecq-bulk-cut-{k}-*")
            assert not left, f"cut at reply {k}: left {left[:3]}"
    finally:
        assert stop_process(worker) == 0


def test_a_worker_told_to_stop_while_redis_is_away_leaves_after_one_heartbeat_ttl(tmp_path) -> None:
    """Issue 15 item 7: a SIGTERM'd worker stayed alive past 109 s waiting for a dead Redis.
    It now leaves non-zero after one heartbeat TTL of trying (its jobs go to recovery)."""
    server = RedisServer(tmp_path).start()
    conn = server.admin()
    log = tmp_path / "worker.log"
    worker = spawn_worker(server.url(), log, "--worker-name", "leaver", "--heartbeat-ttl", "3")
    try:
        until(lambda: conn.exists("vecq:health:leaver") == 1, 30, "the worker up")
        server.stop(signal.SIGKILL)
        time.sleep(1.0)  # it sees the outage
        worker.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = worker.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        stop_process(worker)
        server.stop()
    assert code != 0 and took < 15, (code, took)
    assert "stopping, and Redis unreachable for 3s: leaving 0 job(s) to recovery" in log.read_text()
