"""`BatchWorker`: vecq's batch loop as an rq `SimpleWorker` (no fork: the model stays loaded).

The loop itself -- take many jobs, validate, tokenize, plan, run, write back -- is
`serving.Serving`.  This class is what makes it an rq worker: registration under a name that a
restarted worker may take over from its dead namesake, rq's worker heartbeat and state, the
`vecq:health:<name>` key, signals, and the reconnect loop around each pass.  rq's keys,
registries and result stream are kept, so `rq info`, `rq requeue` and
`Job.fetch(...).return_value()` work on vecq jobs.

An error of the worker itself (engine thread crash, hung engine, bug) ends `work()` with an
exception, so the process exits non-zero rather than hang; its started jobs are then recovered
by the other workers.  SIGTERM/SIGINT: stop taking, finish and write everything in flight, exit
0; a second signal exits at once (recovery retries what was in flight).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

import redis
from redis import Redis
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.worker import SimpleWorker, WorkerStatus

from vecq.engines import Embedder
from vecq.engines.reranker import Reranker
from vecq.producer.connection import CONNECTION_LOST, describe, open_sync
from vecq.producer.keys import health_key, model_name, queue_names
from vecq.producer.serializer import MsgpackSerializer

from .connection import wait_for_redis
from .errors import NameTaken, WorkerCrashed
from .jobstore import JobStore
from .metrics import WorkerMetrics, check_port
from .serving import Serving
from .settings import WorkerSettings

log = logging.getLogger(__name__)

__all__ = ["BatchWorker", "NameTaken", "WorkerCrashed"]

#: rq's worker state (`rq info`, `vecq status`) says busy once the worker has held work this
#: long: each state write is a round trip on the main thread, and a lone query's busy and idle
#: flips were two of them inside its ~1.2 ms on the sandbox (BENCHMARKS.md, issue 14, fourteenth
#: session).  Idle is written as soon as the work is done.
BUSY_AFTER_S = 0.05


class BatchWorker(SimpleWorker):
    """One process, one model, loaded once; many jobs per Redis round trip."""

    def __init__(
        self,
        embedder: Embedder | Reranker,
        *,
        settings: WorkerSettings,
        connection: Redis | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.model = model_name(settings.name or embedder.name)
        conn = connection or open_sync(settings.redis_url)
        wait_for_redis(conn, settings.redis_url if connection is None else describe(conn))
        name = settings.worker_name or f"vecq.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        super().__init__(
            queue_names(self.model, settings.lanes),
            name=name,
            connection=conn,
            serializer=MsgpackSerializer,
            default_result_ttl=settings.result_ttl,
            worker_ttl=max(35, 2 * settings.heartbeat_ttl),
        )
        self.metrics = metrics or WorkerMetrics()
        self.store = JobStore(conn, worker_name=self.name, worker_key=self.key)
        self.serving = Serving(
            embedder,
            settings=settings,
            connection=conn,
            store=self.store,
            metrics=self.metrics,
            model=self.model,
            queue_names=self.queue_names(),
        )
        self._next_beat = 0.0
        self._busy_since: float | None = None  # monotonic: since when the worker holds work

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **kwargs: Any) -> BatchWorker:
        """Load the model (or the null engine) the settings name and build a worker around it;
        a busy metrics port is refused first, before the model loads."""
        if settings.metrics_port is not None:
            check_port(settings.metrics_port, settings.metrics_host)
        return cls(settings.load_embedder(), settings=settings, **kwargs)  # warmed up on the engine thread

    @property
    def finished_jobs(self) -> int:
        return self.serving.jobs.tally.finished

    @property
    def failed_jobs(self) -> int:
        return self.serving.jobs.tally.failed

    @property
    def texts_done(self) -> int:
        return self.serving.jobs.tally.texts

    @property
    def capacity_texts_per_s(self) -> float | None:
        """Texts per second of engine-busy time over its last batches, None before the first
        (`capacity.py`); the gateway sizes its queued-texts limit from it."""
        rate = self.serving.capacity.per_s
        return round(rate, 3) if rate is not None else None

    # --- the loop ----------------------------------------------------------------------------
    def work(self, burst: bool | None = None, logging_level: str | None = None, **_: Any) -> bool:  # type: ignore[override]
        """Serve until stopped (or, with `burst`, until the queues are empty and nothing is in flight)."""
        burst = self.settings.burst if burst is None else burst
        self._bootstrap()
        try:
            self._loop(burst)
        except BaseException:  # a second signal, a crash, a hung engine: leave without waiting on it
            self._teardown(quick=True)
            raise
        self._teardown(quick=False)
        return self.finished_jobs > 0

    def _loop(self, burst: bool) -> None:
        wait, lost_since = 0.5, None
        while True:
            try:
                self._maintain()
                if self.serving.step(burst=burst):
                    return
                self._set_busy(self.serving.busy)
                if lost_since is not None:
                    log.warning(
                        "worker %s: Redis is back after %.1fs", self.name, time.monotonic() - lost_since
                    )
                    wait, lost_since = 0.5, None
            except CONNECTION_LOST as exc:  # through Sentinel, the next connection finds the new primary
                self.serving.intake.abandon_ahead()
                if lost_since is None:
                    lost_since = time.monotonic()
                self._give_up_if_stopping(lost_since)
                log.warning(
                    "worker %s: Redis unreachable (%s); retrying in %.1fs",
                    self.name,
                    " ".join(str(exc).split())[:200],
                    wait,
                )
                time.sleep(wait if not self.serving.policy.stopping else min(wait, 1.0))
                wait = min(wait * 2, 30.0)

    def _give_up_if_stopping(self, lost_since: float) -> None:
        """A worker told to stop while Redis is away cannot write what it holds; waiting for
        Redis kept one alive past 109 s (issue 15).  After a heartbeat TTL of trying it leaves,
        non-zero: its jobs' heartbeats have lapsed by then, and recovery hands them to other
        workers (at least once, as for a worker that died)."""
        if self.serving.policy.stopping and time.monotonic() - lost_since >= self.settings.heartbeat_ttl:
            raise WorkerCrashed(
                f"stopping, and Redis unreachable for {self.settings.heartbeat_ttl}s: leaving "
                f"{len(self.serving.jobs)} job(s) to recovery"
            )

    def _maintain(self) -> None:
        """The watchdog every pass; heartbeats every third of the TTL; cleanup when it is due."""
        now = time.monotonic()
        self.serving.check_engine(now, limit=self.settings.engine_timeout)
        if now >= self._next_beat:
            ttl = self.settings.heartbeat_ttl
            self._next_beat = now + ttl / 3
            with self.connection.pipeline(transaction=False) as pipe:
                self.heartbeat(self.worker_ttl, pipeline=pipe)
                pipe.set(health_key(self.name), self._health(), ex=ttl * 2)
                pipe.execute()
            self.serving.heartbeat(ttl=ttl, now=now)
        self.serving.recovery.maybe_run(now)

    def _health(self) -> str:
        """The health record `vecq health` and `vecq status` read."""
        tally = self.serving.jobs.tally
        return json.dumps(
            {
                "worker": self.name,
                "host": socket.gethostname(),  # `vecq health --this-host`: a container's own workers
                "model": self.model,
                "queues": self.queue_names(),
                "pid": os.getpid(),
                "time": time.time(),
                "open_texts": self.serving.jobs.texts,
                "finished": tally.finished,
                "failed": tally.failed,
                "texts": tally.texts,
                "capacity_texts_per_s": self.capacity_texts_per_s,
                "stopping": self.serving.policy.stopping,
            }
        )

    def _set_busy(self, busy: bool) -> None:
        """Write rq's state when it changes, busy only after `BUSY_AFTER_S` of work."""
        if not busy:
            self._busy_since = None
            if self.get_state() != WorkerStatus.IDLE:
                self.set_state(WorkerStatus.IDLE)
            return
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if self.get_state() != WorkerStatus.BUSY and now - self._busy_since >= BUSY_AFTER_S:
            self.set_state(WorkerStatus.BUSY)

    # --- registration, start and stop --------------------------------------------------------
    def register_birth(self) -> None:
        """rq refuses a name whose worker key is still there, so a supervisor restarting a crashed
        worker under its fixed name would fail until rq's key expires (minutes).  A namesake is
        taken over when it is surely dead: on this host with its pid gone, or silent for two
        heartbeat TTLs (its health key expired).  A live one still makes rq refuse.

        The dead namesake is marked dead rather than deleted: rq's `Worker.all` (every `rq info`,
        every dashboard) drops a listed worker whose key is missing, and a listing that fell in
        the gap between a delete and rq's re-registration dropped the new worker too, leaving it
        serving but unlisted.  rq replaces a dead worker's key in one MULTI, with no such gap."""
        death, host, pid = self.connection.hmget(self.key, ["death", "hostname", "pid"])
        if host is not None and death is None:
            if not self._namesake_dead(host.decode(), int(pid or 0)):
                raise NameTaken(
                    f"a live worker is named {self.name!r} (pid {int(pid or 0)} on {host.decode()}); "
                    "pick another --worker-name"
                )
            log.warning("worker %s: taking over the name of dead pid %d", self.name, int(pid or 0))
            self.connection.hset(self.key, "death", utcformat(rq_now()))
        super().register_birth()

    def _namesake_dead(self, host: str, pid: int) -> bool:
        if not self.connection.exists(health_key(self.name)):
            return True
        if host != socket.gethostname() or pid <= 0:
            return False
        try:
            os.kill(pid, 0)  # signal 0: does the pid exist?
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user's process
            pass
        return False

    def _bootstrap(self) -> None:
        sys.setswitchinterval(self.settings.gil_switch_ms / 1000)  # process-wide
        # Signals first: a SIGTERM that lands while warming up or registering (a supervisor or
        # a test stopping a worker as soon as it shows up) must drain and exit 0 like any other,
        # not kill the process with the default handler.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGTERM, self.request_stop)
        try:  # warm before registering: a registered worker is one that serves at full speed
            self.serving.runner.start()
        except Exception as exc:
            raise WorkerCrashed(f"engine warmup failed: {exc!r}") from exc
        self.register_birth()
        self.subscribe()
        self.set_state(WorkerStatus.STARTED)
        self.serving.finisher.start()
        if self.serving.lane_watch is not None:
            self.serving.lane_watch.start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        log.info(
            "worker %s: serving %s on %s (pid %d)",
            self.name,
            self.model,
            ", ".join(self.queue_names()),
            os.getpid(),
        )

    def _teardown(self, *, quick: bool) -> None:
        serving = self.serving
        serving.runner.stop(timeout=0.0 if quick else 5.0)
        if serving.lane_watch is not None:
            serving.lane_watch.stop()
        serving.finisher.stop()
        serving.tokenizing.shutdown(quick=quick)
        serving.intake.abandon_ahead()  # only after a crash: a clean stop collected it
        try:
            serving.intake.settle()
            self.connection.delete(health_key(self.name))
            self.register_death()
            self.unsubscribe()
        except redis.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.name, exc)
        log.info(
            "worker %s: stopped (%d finished, %d failed)", self.name, self.finished_jobs, self.failed_jobs
        )

    def unsubscribe(self) -> None:
        """rq's, with the pub/sub thread told to stop *before* the UNSUBSCRIBE goes out, so that
        the reply ends its wait.  rq stops it after, and when the reply came first the thread
        went back to a 60 s wait and the join gave up after 1 s: a second added to every stop
        about half the time (every embedded `vecq embed` run).  redis-py 8's `stop()` also joins
        the thread, which waited out that 60 s before the UNSUBSCRIBE could go (every burst
        worker hung on it): told `timeout=0`, it only trips the flag, as earlier versions did."""
        if self.pubsub_thread:
            thread = self.pubsub_thread
            if "timeout" in inspect.signature(thread.stop).parameters:
                thread.stop(timeout=0)
            else:
                thread.stop()
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def request_stop(self, signum: int, frame: object) -> None:
        """First SIGTERM/SIGINT: stop taking jobs, drain what is in flight, then exit 0."""
        log.info(
            "worker %s: %s received, draining %d job(s) in flight",
            self.name,
            signal.Signals(signum).name,
            len(self.serving.jobs),
        )
        self.serving.policy.stopping = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)

    def request_force_stop(self, signum: int, frame: object) -> None:
        """Second signal: leave at once; the jobs in flight are retried by recovery."""
        log.warning(
            "worker %s: second signal, exiting now with %d job(s) in flight",
            self.name,
            len(self.serving.jobs),
        )
        raise SystemExit(1)

    def stop(self) -> None:
        """Ask a worker running in another thread to drain and return (what SIGTERM does)."""
        self.serving.policy.stopping = True
        self.serving.intake.wake()

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        raise NotImplementedError("BatchWorker runs jobs in batches; it never executes one job alone")
