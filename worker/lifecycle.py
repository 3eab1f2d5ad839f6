"""The batch worker's life around its loop: start, heartbeats, health, watchdog, signals, stop.

A mixin of `BatchWorker` (worker.py), kept apart so that the loop there reads on its own: it
uses the worker's runner, finisher, intake, store, recovery, open jobs and settings, and rq's
`SimpleWorker` registration (`register_birth`, `heartbeat`, `set_state`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

import redis
from rq.utils import now as rq_now
from rq.utils import utcformat
from rq.worker import WorkerStatus

from vecq.producer.keys import HEALTH_PREFIX

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from .intake import Intake, WorkItem
    from .jobstore import JobStore
    from .metrics import WorkerMetrics
    from .planner import Planner
    from .recovery import Recovery
    from .runner import EngineRunner
    from .settings import WorkerSettings
    from .writeback import Assembler, Finisher

log = logging.getLogger(__name__)


class NameTaken(ValueError):
    """Another live worker already uses this worker name."""


class WorkerCrashed(RuntimeError):
    """The engine thread or the loop failed in a way the worker cannot serve through."""


class Lifecycle:
    """Upkeep while serving, and registration, start-up, signals and teardown."""

    # The parts of BatchWorker this uses (set in its __init__).
    settings: WorkerSettings
    model: str
    runner: EngineRunner
    finisher: Finisher
    intake: Intake
    store: JobStore
    recovery: Recovery
    planner: Planner
    assembler: Assembler
    metrics: WorkerMetrics
    _tokenizer: ThreadPoolExecutor
    _open: dict[WorkItem, None]
    _open_texts: int
    _stopping: bool
    _next_beat: float
    finished_jobs: int
    failed_jobs: int
    texts_done: int

    # --- upkeep ------------------------------------------------------------------------------
    def _maintain(self, now: float) -> None:
        """Heartbeats (worker, executions, health key) every third of the TTL; cleanup; timeouts."""
        self._watchdog(now)
        if now >= self._next_beat:
            self._next_beat = now + self.settings.heartbeat_ttl / 3
            self._beat()
            self._expire_overdue(now)
        self.recovery.maybe_run(now)

    def _watchdog(self, now: float) -> None:
        """An engine call that never returns (a wedged GPU, a deadlocked runtime) cannot be
        interrupted from Python; heartbeating its jobs forever would keep them from every other
        worker.  So the worker exits non-zero, its heartbeats stop, and recovery retries its jobs
        elsewhere -- each such attempt costs the job one rq retry, so a text that always hangs
        ends failed instead of looping."""
        since = self.runner.busy_since
        limit = self.settings.engine_timeout
        if since is not None and now - since > limit:
            raise WorkerCrashed(
                f"engine call running for {now - since:.0f}s, over engine_timeout={limit:g}s; exiting "
                f"so that its {len(self._open)} job(s) are retried by other workers"
            )

    def _beat(self) -> None:
        ttl = self.settings.heartbeat_ttl
        with self.connection.pipeline(transaction=False) as pipe:
            self.heartbeat(self.worker_ttl, pipeline=pipe)
            pipe.set(HEALTH_PREFIX + self.name, self._health(), ex=ttl * 2)
            pipe.execute()
        items = list(self._open) + [i for i, _ in self._outbox]
        for start in range(0, len(items), 2048):
            chunk = items[start : start + 2048]
            lost = set(self.store.heartbeat([i.running for i in chunk], ttl=ttl, now=time.time()))
            for item in chunk:
                if item.job_id in lost and item in self._open:
                    log.warning(
                        "job %s: execution expired and was recovered elsewhere; dropping it", item.job_id
                    )
                    self._close(item)
                    self.assembler.discard(item)
                    self.planner.drop(item)

    def _expire_overdue(self, now: float) -> None:
        limit = self.settings.job_timeout
        for item in [i for i in self._open if now - i.taken_at > limit]:
            self._fail(item, f"JobTimeoutException: not done within {limit}s", "timeout", retry=True)

    def _health(self) -> str:
        return json.dumps(
            {
                "worker": self.name,
                "model": self.model,
                "queues": self.queue_names(),
                "pid": os.getpid(),
                "time": time.time(),
                "open_texts": self._open_texts,
                "finished": self.finished_jobs,
                "failed": self.failed_jobs,
                "texts": self.texts_done,
                "stopping": self._stopping,
            }
        )

    def _set_busy(self, busy: bool) -> None:
        state = WorkerStatus.BUSY if busy else WorkerStatus.IDLE
        if self.get_state() != state:
            self.set_state(state)

    # --- lifecycle ---------------------------------------------------------------------------
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
        if not self.connection.exists(HEALTH_PREFIX + self.name):
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
        # Signals first: a SIGTERM that lands while warming up or registering (a supervisor or
        # a test stopping a worker as soon as it shows up) must drain and exit 0 like any other,
        # not kill the process with the default handler.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGTERM, self.request_stop)
        try:  # warm before registering: a registered worker is one that serves at full speed
            self.runner.start()
        except Exception as exc:
            raise WorkerCrashed(f"engine warmup failed: {exc!r}") from exc
        self.register_birth()
        self.subscribe()
        self.set_state(WorkerStatus.STARTED)
        self.finisher.start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        log.info(
            "worker %s: serving %s on %s (pid %d)",
            self.name,
            self.model,
            ", ".join(self.queue_names()),
            os.getpid(),
        )

    def _teardown(self, *, quick: bool) -> None:
        self.runner.stop(timeout=0.0 if quick else 5.0)
        self.finisher.stop()
        self._tokenizer.shutdown(wait=not quick, cancel_futures=True)
        self.intake.abandon_ahead()  # only after a crash: a clean stop collected it
        try:
            self.intake.settle()
            self.connection.delete(HEALTH_PREFIX + self.name)
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
        about half the time (every embedded `vecq embed` run)."""
        if self.pubsub_thread:
            self.pubsub_thread.stop()
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def request_stop(self, signum: int, frame: object) -> None:
        """First SIGTERM/SIGINT: stop taking jobs, drain what is in flight, then exit 0."""
        log.info(
            "worker %s: %s received, draining %d job(s) in flight",
            self.name,
            signal.Signals(signum).name,
            len(self._open),
        )
        self._stopping = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)

    def request_force_stop(self, signum: int, frame: object) -> None:
        """Second signal: leave at once; the jobs in flight are retried by recovery."""
        log.warning(
            "worker %s: second signal, exiting now with %d job(s) in flight", self.name, len(self._open)
        )
        raise SystemExit(1)

    def stop(self) -> None:
        """Ask a worker running in another thread to drain and return (what SIGTERM does)."""
        self._stopping = True
        self.intake.wake()

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        raise NotImplementedError("BatchWorker runs jobs in batches; it never executes one job alone")
