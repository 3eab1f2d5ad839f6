"""`BatchWorker`: an rq `SimpleWorker` that takes many jobs at once and batches their texts.

The loop flows one way: take → validate → tokenize/plan → run → write back.  The main thread
does all Redis I/O and planning; the engine runs in its own thread (`runner.EngineRunner`)
with exactly one prefetched batch waiting, so tokenizing batch k+1 and writing batch k-1
overlap running batch k.  rq's keys, registries, worker registration and result stream are
kept, so `rq info`, `rq requeue` and `Job.fetch(...).return_value()` work on vecq jobs.

Failures, per job: a bad job fails alone at intake; a text over the limit with truncation off
fails its job; an engine error on a batch of several jobs re-runs each of its jobs alone (one
job per batch), so a poison text fails only its own job -- through rq `Retry` first -- while
its batch-mates finish.  An error of the worker itself (engine thread crash, bug) ends `work()`
with an exception, so the process exits non-zero rather than hang; its started jobs are then
recovered by the other workers.  SIGTERM/SIGINT: stop taking, finish and write everything
in flight, exit 0; a second signal exits at once (recovery retries what was in flight).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from redis import Redis
from rq.worker import SimpleWorker

from vecq.engines import Embedder
from vecq.producer.connection import CONNECTION_LOST, describe, open_sync
from vecq.producer.keys import model_name, queue_names, queued_texts_key
from vecq.producer.serializer import MsgpackSerializer

from .connection import wait_for_redis
from .intake import Intake, Rejected, WorkItem
from .jobstore import JobStore
from .lifecycle import Lifecycle, NameTaken, WorkerCrashed
from .metrics import WorkerMetrics
from .planner import Encoded, NewJob, PlannedBatch, Planner, encode_jobs
from .prefetch import PrefetchBudget
from .recovery import Recovery
from .runner import Crashed, Done, EngineRunner
from .settings import WorkerSettings
from .writeback import Assembler, Failure, Finisher, Writer, WriterCrashed

log = logging.getLogger(__name__)

__all__ = ["BatchWorker", "NameTaken", "WorkerCrashed"]


#: Texts of interactive jobs taken per loop while bulk work fills the prefetch budget.
INTERACTIVE_BUDGET = 256


class BatchWorker(Lifecycle, SimpleWorker):
    """One process, one model, loaded once; many jobs per Redis round trip."""

    #: Seconds an idle worker waits on its queue per call (one queue; with two it polls every
    #: 50 ms).  `stop()` cuts the wait short (`Intake.wake`); a signal lets it run out.
    IDLE_WAIT_S = 1.0

    def __init__(
        self,
        embedder: Embedder,
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
        self.intake = Intake(
            conn,
            self.store,
            self.queue_names(),
            list(settings.lanes),
            self.model,
            settings.heartbeat_ttl,
            settings.result_ttl,
        )
        self.planner = Planner(embedder.shapes, embedder.tokenizer, max_wait_s=settings.max_wait_s)
        self.assembler = Assembler(embedder.dim)
        self.writer = Writer(conn, self.store)
        self.finisher = Finisher(self.writer)
        self.recovery = Recovery(
            conn,
            self.store,
            self.queue_names(),
            interval=settings.cleanup_interval,
            stranded_after=settings.stranded_after,
        )
        self.runner = EngineRunner(embedder.engine, embedder.tokenizer)
        self._open: dict[WorkItem, None] = {}
        self._open_texts = 0
        self.prefetch = PrefetchBudget(
            cap=settings.prefetch_texts, largest_batch=max(shape.batch for shape in embedder.shapes)
        )
        self._open_interactive = 0  # texts of open interactive jobs (their own small allowance)
        # Tokenizing runs on a thread of its own (`tokenizers` releases the GIL), overlapping the
        # main thread's Python; each take's jobs are one task, planned in take order.
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="vecq-tokenize")
        self._tokenizing: deque[tuple[Future[Encoded], int]] = deque()  # (task, its texts)
        self._outbox: list[tuple[WorkItem, np.ndarray]] = []
        self._failbox: list[Failure] = []
        self._refusals: list[Rejected] = []  # jobs refused at intake, their failure not written yet
        self._stopping = False
        self._next_beat = 0.0
        self._took_last = False
        self._flowing = False  # the last take found jobs: the next one is sent ahead (Intake.send_ahead)
        self.finished_jobs = 0
        self.failed_jobs = 0
        self.texts_done = 0

    @classmethod
    def from_settings(cls, settings: WorkerSettings, **kwargs: Any) -> BatchWorker:
        """Load the model (or the null engine) the settings name and build a worker around it."""
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if settings.tokenize_in_parallel() else "false"
        embedder = Embedder.load(settings.model_path, backend=settings.backend, device=settings.device)
        return cls(embedder, settings=settings, **kwargs)  # warmed up on the engine thread

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
                if self._step(burst):
                    return
                if lost_since is not None:
                    log.warning(
                        "worker %s: Redis is back after %.1fs", self.name, time.monotonic() - lost_since
                    )
                    wait, lost_since = 0.5, None
            except CONNECTION_LOST as exc:  # through Sentinel, the next connection finds the new primary
                self.intake.abandon_ahead()
                if lost_since is None:
                    lost_since = time.monotonic()
                log.warning(
                    "worker %s: Redis unreachable (%s); retrying in %.1fs",
                    self.name,
                    " ".join(str(exc).split())[:200],
                    wait,
                )
                time.sleep(wait)
                wait = min(wait * 2, 30.0)

    def _step(self, burst: bool) -> bool:
        """One pass: take, collect engine results, write back, feed the engine, wait; True: stop."""
        now = time.monotonic()
        self._maintain(now)
        idle = self._idle()
        took = 0
        if self.intake.ahead:
            # a take sent earlier: collected once Redis has answered, or at once when the planner
            # runs low; its jobs are started, so even a stopping worker runs them
            low = self.planner.pending + self._tokenizing_texts() < 256
            if self._stopping or low or self.intake.ahead_ready():
                took = self._take(block=0.0)
        elif not self._stopping and self._wants_more():
            took = self._take(block=0.0 if (burst or not idle) else self.IDLE_WAIT_S)
        elif not self._stopping and self._interactive_room() > 0:
            # bulk fills the budget: interactive jobs still get in
            took = self._take(block=0.0, first_lane_only=True)
        self._took_last = took > 0
        self._collect(timeout=0.0)
        requeued = self._write()
        self._plan_tokenized(wait=self.planner.pending == 0 or self._stopping)
        self._feed(time.monotonic())
        if self._flowing and not self.intake.ahead and not self._stopping and self._wants_more():
            self.intake.send_ahead(self.prefetch.texts - self._held_texts())  # jobs keep coming: take on
        done = self._stopping or (burst and took == 0 and not requeued)
        if done and self._idle() and not self.intake.ahead:
            return True
        self._wait()
        return False

    def _wants_more(self, held: int = 0, rows: int = 0) -> bool:
        """Take when a quarter of the prefetch budget is free, or when the planner is about to
        run dry: refilling in big gulps keeps round trips per job low.  `held`/`rows`: texts
        and rows taken but not admitted yet."""
        budget, held = self.prefetch.texts, self._held_texts() + held
        rows += self.planner.pending + self._tokenizing_texts()
        return held <= budget - budget // 4 or (held < budget and rows < 256)

    def _held_texts(self) -> int:
        """Texts of the jobs this worker has started and not yet ended in Redis: open ones, and
        done ones the finishing thread is still writing.  Takes are budgeted on this, so what a
        worker holds stays within its prefetch budget (plus one job) even when writing lags,
        as it does on a loaded machine."""
        return self._open_texts + self.finisher.texts_in_flight

    def _idle(self) -> bool:
        return (
            not self._open
            and not self._tokenizing
            and not self._outbox
            and not self._failbox
            and not self._refusals
            and self.runner.in_flight == 0
            and self.finisher.in_flight == 0
        )

    def _interactive_room(self) -> int:
        """Texts of interactive jobs that may still be taken while bulk fills the prefetch budget."""
        if len(self.intake.queue_names) < 2 or self.intake.lanes[0] != "interactive":
            return 0
        bulk_texts = self._open_texts - self._open_interactive
        if bulk_texts <= self.prefetch.texts // 2:
            return 0  # the budget is not bulk's: the ordinary take serves interactive jobs first
        return INTERACTIVE_BUDGET - self._open_interactive

    def _take(self, *, block: float, first_lane_only: bool = False) -> int:
        if first_lane_only:
            taken = self.intake.take(self._interactive_room(), block_s=0.0, first_lane_only=True)
        else:
            taken = self.intake.take(self.prefetch.texts - self._held_texts(), block_s=block)
        if not first_lane_only:
            self._flowing = bool(taken)
        if not taken:
            return 0
        held = self.intake.texts_in(taken)
        if not self._stopping and not first_lane_only and self._wants_more(held, held):
            self.intake.send_ahead(self.prefetch.texts - self._held_texts() - held)
        started, rejected = self.intake.admit(taken, now_wall=time.time())
        self._hold(started)
        self._refusals += rejected  # written by `_write`, which can lose its connection safely
        if started:
            self._set_busy(True)
        return len(taken)

    def _hold(self, started: list[WorkItem]) -> None:
        """Open, heartbeat and tokenize what a take started -- before any further Redis call: a
        connection lost after a take once left two jobs open but never tokenized, heartbeated
        (so never recovered) and never run.  Held first, they survive any later call's failure."""
        for item in started:
            self._open[item] = None
            self._open_texts += len(item.texts)
            if item.lane == "interactive":
                self._open_interactive += len(item.texts)
            self.assembler.open(item)
        self.metrics.queue_waits([i.queue_wait for i in started if i.queue_wait is not None])
        if started:
            jobs = [NewJob(i, i.texts, i.lane, i.truncate) for i in started]
            task = self._tokenizer.submit(encode_jobs, self.planner.encoder, jobs, now=time.monotonic())
            self._tokenizing.append((task, sum(len(i.texts) for i in started)))

    def _tokenizing_texts(self) -> int:
        return sum(texts for _, texts in self._tokenizing)

    def _plan_tokenized(self, *, wait: bool) -> None:
        """Hand tokenized jobs to the planner, in take order; `wait`: for the oldest, if it is
        still tokenizing.  A tokenizer failure re-raises here, so the worker exits non-zero."""
        while self._tokenizing and (wait or self._tokenizing[0][0].done()):
            future, _ = self._tokenizing.popleft()
            for owner, message in self.planner.add_encoded(future.result()):
                self._fail(owner, message, "text_too_long", retry=False)  # type: ignore[arg-type]
            wait = False

    def _feed(self, now: float) -> None:
        while self.runner.slot_free:
            # Waiting for batch-mates only pays while the engine is busy: an idle engine takes
            # the partial batch now (a lone interactive text must not sit out max_wait).
            idle_engine = self.runner.in_flight == 0
            planned = self.planner.next_batch(now, flush=self._stopping or idle_engine)
            if planned is None:
                return
            self.runner.offer(planned)

    def _wait(self) -> None:
        """Block until the engine returns a batch, the planner's next deadline, or a poll tick."""
        if self.runner.in_flight == 0 and self.planner.pending == 0:
            if self.finisher.in_flight and not self._took_last:
                self._reap(timeout=0.005)
            return
        # a due batch cannot go while the hand-off slot is taken: then wait for the engine,
        # not for the deadline (a past deadline would spin this loop and starve the engine thread)
        deadline = self.planner.next_deadline() if self.runner.slot_free else None
        poll = 0.0005 if self._took_last else 0.005
        if self._stopping or self._open_texts >= self.prefetch.texts or not self.runner.slot_free:
            # nothing can be fed before the engine takes the waiting batch: sleep until it returns
            # one (polling here cost ~15% of a CPU core beside a CPU engine, BENCHMARKS.md)
            poll = 0.05
        timeout = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
        if self.runner.in_flight:
            self._collect(timeout=timeout)
        elif timeout > 0:
            time.sleep(timeout)

    def _collect(self, *, timeout: float) -> None:
        result = self.runner.wait(timeout)
        while result is not None:
            if isinstance(result, Crashed):
                raise WorkerCrashed(f"engine thread crashed: {result.error!r}") from result.error
            self._on_done(result)
            result = self.runner.wait(0.0)

    def _on_done(self, done: Done) -> None:
        planned = done.planned
        if done.error is None and done.vectors is not None:
            shape = planned.shape
            self.metrics.batch(
                shape_rows=shape.batch,
                rows=len(planned.rows),
                shape_tokens=shape.tokens,
                real_tokens=done.real_tokens,
                seconds=done.seconds,
                shape=str(shape),
            )
            self.texts_done += len(planned.rows)
            self.prefetch.batch_done(len(planned.rows), done.seconds)
            self._outbox += self.assembler.fill(((r.owner, r.index) for r in planned.rows), done.vectors)
            return
        self._on_batch_error(planned, done.error or "engine returned no vectors")

    def _on_batch_error(self, planned: PlannedBatch, error: str) -> None:
        owners = [o for o in planned.owners if o in self._open]
        if len(owners) > 1 and not planned.isolated:
            log.warning("batch of %d jobs failed (%s): re-running each job alone", len(owners), error)
            self.planner.retry_isolated(planned)
            return
        for owner in owners:
            self._fail(owner, f"EngineError: {error}", "engine_error", retry=True)  # type: ignore[arg-type]

    def _fail(self, item: WorkItem, reason: str, kind: str, *, retry: bool) -> None:
        if item not in self._open:
            return
        self._close(item)
        self.assembler.discard(item)
        self.planner.drop(item)
        self._failbox.append(Failure(item, reason, kind, retry))

    def _close(self, item: WorkItem) -> None:
        if self._open.pop(item, 0) is None:
            self._open_texts -= len(item.texts)
            if item.lane == "interactive":
                self._open_interactive -= len(item.texts)

    def _write(self) -> int:
        """Hand what is done to the finishing thread, write failures; returns how many jobs went
        back on a queue (rq Retry)."""
        self._reap(timeout=0.0)
        if self._outbox:
            done, self._outbox = self._outbox, []
            for item, _ in done:
                self._close(item)
            self.finisher.submit(done)  # it slices the writes
        if self._refusals:
            self._write_refusals()
        retried = self._write_failures() if self._failbox else 0
        if not self._open and not self._tokenizing:
            self.planner.forget_dropped()
            self._set_busy(False)
        self.metrics.pending_texts.set(self._open_texts)
        return retried

    def _reap(self, *, timeout: float) -> None:
        """Count what the finishing thread wrote; its crash ends the worker."""
        report = self.finisher.poll(timeout)
        while report is not None:
            if isinstance(report, WriterCrashed):
                raise WorkerCrashed(f"finishing thread crashed: {report.error!r}") from report.error
            done = report.jobs - len(report.skipped)
            self.finished_jobs += done
            self.metrics.jobs("finished", done)
            report = self.finisher.poll(0.0)

    def _write_refusals(self) -> None:
        self.intake.refuse(self._refusals)  # safe to repeat after a lost reply
        for rej in self._refusals:
            self.metrics.failure(rej.kind)
        self.metrics.jobs("failed", len(self._refusals))
        self.failed_jobs += len(self._refusals)
        self._refusals = []

    def _write_failures(self) -> int:
        retried = self.writer.fail(
            self._failbox,
            worker_name=self.name,
            worker_key=self.key,
            counter_key=queued_texts_key(self.model),
        )
        for f in self._failbox:
            self.metrics.failure(f.kind)
        self.metrics.jobs("retried", len(retried))
        self.metrics.jobs("failed", len(self._failbox) - len(retried))
        self.failed_jobs += len(self._failbox) - len(retried)
        self._failbox = []
        return len(retried)
