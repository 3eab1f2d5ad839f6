"""The batch loop of one worker: take → validate → tokenize/plan → run → write back.

`Serving` wires the owners together and moves work between them, one way, once per pass:
- `TakePolicy` decides what to take, `Intake` takes it, `Admission` (pure) says which jobs may
  run, `OpenJobs` holds those until Redis has their end;
- `Tokenizing` tokenizes each take on its own thread (or in tokenizer processes), `Planner`
  (the one owner of pending texts; `TokenPlanner` for an engine that packs) cuts batches,
  `EngineRunner` (the one owner of the model) runs them with one batch waiting in its hand-off
  slot, which an interactive batch may take from a bulk one (`_preempt`); a lone query on an
  idle worker runs on this thread instead and is written at once (`_runs_here`);
- finished jobs go to the `Finisher` thread, failures and refusals to the `FailureWriter`;
- `LaneWatch` wakes the pass when a query lands on the interactive lane while bulk runs.
Redis I/O happens on this thread except the finishing writes of bulk results; work crosses
threads only through queues.  `BatchWorker` (worker.py) is the rq face around it: registration,
heartbeats, signals.

Failures, per job: a bad job fails alone at intake; a text over the limit with truncation off
fails its job; an engine error on a batch of several jobs re-runs each of them alone, so a
poison text fails only its own job (through rq `Retry` first) while its batch-mates finish.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis

from vecq.engines import Embedder
from vecq.engines.base import packs
from vecq.engines.reranker import Reranker
from vecq.producer.keys import LANES, queued_texts_key

from .capacity import MovingRate
from .errors import WorkerCrashed, engine_hung
from .failures import FailureWriter
from .finisher import Finisher, WriterCrashed
from .intake import Intake
from .jobstore import JobStore
from .lanewatch import LaneWatch
from .metrics import WorkerMetrics
from .openjobs import OpenJobs
from .packing import TokenPlanner, planner_for
from .prefetch import PrefetchBudget
from .recovery import Recovery
from .runner import Crashed, Done, EngineRunner, Planned
from .settings import WorkerSettings
from .takepolicy import Load, Take, TakePolicy
from .tokenizing import INLINE_TEXTS, Tokenizing
from .validation import Admission, WorkItem

log = logging.getLogger(__name__)

#: Seconds an idle worker waits on its queue per call (one queue; with two it polls every 50 ms).
IDLE_WAIT_S = 1.0
#: Seconds one pass waits for the oldest tokenizing task when nothing else is planned.
TOKENIZED_WAIT_S = 0.002
#: Executions heartbeated per script call.
HEARTBEAT_CHUNK = 2048
#: An interactive batch of at most this many texts (the take a query makes, tokenized on this
#: thread too), cut while nothing else is waiting, tokenizing or running, runs on this thread and
#: is written at once (`EngineRunner.run_here`).
RUN_HERE_TEXTS = INLINE_TEXTS


def _admission(
    embedder: Embedder | Reranker, settings: WorkerSettings, model: str, queue_names: list[str]
) -> Admission:
    """The rules of this worker's model: its dim, prompts and job kind (embed or rerank)."""
    rules = (settings.result_ttl, settings.job_timeout, embedder.dim, embedder.prompts, embedder.scores_pairs)
    return Admission(queue_names, list(settings.lanes), model, *rules)


class Serving:
    """Everything one worker holds while it serves, and the pass that moves it along."""

    def __init__(
        self,
        embedder: Embedder | Reranker,
        *,
        settings: WorkerSettings,
        connection: Redis,
        store: JobStore,
        metrics: WorkerMetrics,
        model: str,
        queue_names: list[str],
    ) -> None:
        engine = embedder.engine
        self.settings = settings
        largest = engine.max_rows if packs(engine) else max(shape.batch for shape in embedder.shapes)
        self.metrics = metrics
        self.store = store
        self.jobs = OpenJobs(embedder.dim)
        self.capacity = MovingRate()  # texts/s of engine-busy time, for the health record
        self.policy = TakePolicy(
            lanes=settings.lanes,
            prefetch=PrefetchBudget(cap=settings.prefetch_texts, largest_batch=largest),
            idle_wait_s=IDLE_WAIT_S,
        )
        self.intake = Intake(
            connection, store, queue_names, model=model, heartbeat_ttl=settings.heartbeat_ttl
        )
        self.admission = _admission(embedder, settings, model, queue_names)
        #: set by the engine thread with each result and by each finished tokenizing task: the
        #: main thread sleeps on it, so tokenized texts are planned (and the engine's hand-off slot
        #: refilled) as they come, not only when the engine returns a batch -- it left the slot
        #: empty 80 % of a bulk run on the H200 and the device idle between batches
        self.wake = threading.Event()
        self.tokenizing = Tokenizing(
            embedder.tokenizer.with_parallelism(settings.tokenize_in_parallel()),
            processes=settings.tokenizer_processes(),
            threads=settings.tokenizer_threads(),
            wake=self.wake,
        )
        self.planner = planner_for(embedder, settings)
        self.runner = EngineRunner(embedder.engine, embedder.tokenizer, wake=self.wake)
        #: wakes the main thread when a query lands while bulk keeps it busy (both lanes served)
        self.lane_watch = LaneWatch.for_lanes(connection, queue_names, settings.lanes, self.wake)
        self.finisher = Finisher(store)
        self.failures = FailureWriter(connection, store, counter_key=queued_texts_key(model))
        self.recovery = Recovery(
            connection,
            store,
            queue_names,
            interval=settings.cleanup_interval,
            stranded_after=settings.stranded_after,
        )

    # --- what is held ------------------------------------------------------------------------
    def load(self) -> Load:
        return Load(
            held_texts=self.jobs.texts + self.finisher.texts_in_flight,
            open_texts=self.jobs.texts,
            interactive_texts=self.jobs.interactive_texts,
            pending_rows=self.planner.pending + self.tokenizing.texts,
            idle=self.idle,
            query_waiting=self.lane_watch is not None and self.lane_watch.waiting,
        )

    @property
    def idle(self) -> bool:
        """Nothing open, tokenizing, running or being written."""
        return (
            self.jobs.idle
            and not self.tokenizing
            and self.runner.in_flight == 0
            and self.finisher.in_flight == 0
        )

    @property
    def busy(self) -> bool:
        """Jobs are open (rq's worker state: busy)."""
        return len(self.jobs) > 0 or bool(self.tokenizing)

    # --- the pass ----------------------------------------------------------------------------
    def step(self, *, burst: bool) -> bool:
        """One pass: collect engine results, write back, take, feed the engine, wait; True: done.
        Results are written before the take: a finished query's write must not wait behind a
        take's round trip."""
        self._collect(timeout=0.0)
        requeued = self._write()
        take = self.policy.next_take(
            self.load(), ahead=self.intake.ahead, ahead_ready=self.intake.ahead_ready, burst=burst
        )
        took = self._take(take) if take is not None else 0
        self._plan_tokenized(wait=self.planner.pending == 0 or self.policy.stopping)
        self._feed(time.monotonic())
        if not self.intake.ahead:
            budget = self.policy.take_ahead(self.load())
            if budget is not None:
                self.intake.send_ahead(budget)  # jobs keep coming: take on
        done = self.policy.stopping or (burst and took == 0 and not requeued)
        if done and self.idle and not self.intake.ahead:
            return True
        self._wait(took_now=took > 0)
        return False

    def _take(self, take: Take) -> int:
        taken = self.intake.take(take)
        if self.lane_watch is not None:
            self.lane_watch.taken()  # the query that woke this pass, if any, had its take
        texts = self.intake.texts_in(taken)
        self.policy.took(take, texts)
        if not taken:
            return 0
        if not take.first_lane_only:
            ahead = self.policy.take_ahead(self.load(), taken_texts=texts)
            if ahead is not None:
                self.intake.send_ahead(ahead)
        started, refused = self.admission.admit(taken, now_wall=time.time(), now=time.monotonic())
        self._hold(started)
        self.jobs.refuse(refused)  # written by `_write`, which can lose its connection safely
        return len(taken)

    def _hold(self, started: list[WorkItem]) -> None:
        """Open and tokenize what a take started -- before any further Redis call: a connection
        lost after a take once left two jobs open but never tokenized, heartbeated (so never
        recovered) and never run.  Held first, they survive any later call's failure."""
        self.intake.admitted(started)
        self.jobs.hold(started)
        self.metrics.queue_waits([i.queue_wait for i in started if i.queue_wait is not None])
        self.tokenizing.submit(started, now=time.monotonic())

    def _plan_tokenized(self, *, wait: bool) -> None:
        """Hand tokenized jobs to the planner, in take order; `wait`: up to `TOKENIZED_WAIT_S`
        for the oldest, if it is still tokenizing -- never longer, so that a query arriving
        meanwhile is taken at once, not after a bulk task of hundreds of texts.  A tokenizer
        failure re-raises here, so the worker exits non-zero."""
        for encoded in self.tokenizing.ready(wait=TOKENIZED_WAIT_S if wait else 0.0):
            for owner, message in self.planner.add_encoded(encoded):
                self.fail(owner, message, "text_too_long", retry=False)  # type: ignore[arg-type]

    def _feed(self, now: float) -> None:
        while self.runner.slot_free:
            # Waiting for batch-mates only pays while the engine is busy: an idle engine takes
            # the partial batch now (a lone interactive text must not sit out max_wait).
            idle_engine = self.runner.in_flight == 0
            planned = self.planner.next_batch(now, flush=self.policy.stopping or idle_engine)
            if planned is None:
                return
            if idle_engine and self._runs_here(planned):
                self._on_done(self.runner.run_here(planned, limit=self.settings.engine_timeout))
                self._write()  # before anything else this pass: the client is waiting on it
                continue
            self.runner.offer(planned)
        self._preempt()

    def _runs_here(self, planned: Planned) -> bool:
        """A lone query on an idle worker: run on this thread, crossing no other (`run_here`)."""
        return (
            self.runner.runs_anywhere
            and getattr(planned, "interactive", False)
            and planned.texts <= RUN_HERE_TEXTS
            and self.planner.pending == 0
            and not self.tokenizing
        )

    def _preempt(self) -> None:
        """An interactive text waiting while a bulk batch holds the hand-off slot takes the slot
        (the bulk batch goes back to the planner, first in line): it then waits only for the
        batches already on the device, not for one more full bulk buffer."""
        planner = self.planner
        if not isinstance(planner, TokenPlanner) or not planner.waiting(LANES[0]):
            return
        urgent = planner.urgent_batch()
        if urgent is None:
            return
        placed, bumped = self.runner.offer_first(urgent)
        if not placed:
            planner.put_back(urgent)
        elif bumped is not None:
            planner.put_back(bumped)  # type: ignore[arg-type]

    def _wait(self, *, took_now: bool) -> None:
        """Block until the engine returns a batch, the planner's next deadline, or a poll tick."""
        if self.runner.in_flight == 0 and self.planner.pending == 0:
            if self.finisher.in_flight and not took_now:
                self._reap(timeout=0.005)
            return
        # a due batch cannot go while the hand-off slot is taken: then wait for the engine,
        # not for the deadline (a past deadline would spin this loop and starve the engine thread)
        deadline = self.planner.next_deadline() if self.runner.slot_free else None
        poll = 0.0005 if took_now else 0.005
        if self.policy.stopping or self.policy.full(self.load()) or not self.runner.slot_free:
            # nothing can be fed before the engine takes the waiting batch: sleep until it returns
            # one (polling here cost ~15% of a CPU core beside a CPU engine, BENCHMARKS.md)
            poll = 0.05
        timeout = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
        if timeout > 0 and self.wake.wait(timeout):
            self.wake.clear()  # what woke it is collected below or planned in the next pass
        self._collect(timeout=0.0)

    # --- engine results ----------------------------------------------------------------------
    def _collect(self, *, timeout: float) -> None:
        result = self.runner.wait(timeout)
        while result is not None:
            if isinstance(result, Crashed):
                raise WorkerCrashed(f"engine thread crashed: {result.error!r}") from result.error
            self._on_done(result)
            result = self.runner.wait(0.0)

    def _on_done(self, done: Done) -> None:
        planned = done.planned
        if done.error is not None or done.vectors is None:
            self._on_batch_error(planned, done.error or "engine returned no vectors")
            return
        rows, tokens = planned.capacity
        self.metrics.batch(
            shape_rows=rows,
            rows=planned.texts,
            shape_tokens=tokens,
            real_tokens=done.real_tokens,
            seconds=done.seconds,
            shape=planned.label,
        )
        self.jobs.tally.texts += planned.texts
        self.policy.prefetch.batch_done(planned.texts, done.seconds)
        self.capacity.add(planned.texts, done.busy)
        self.jobs.fill(planned.placements(), done.vectors)

    def _on_batch_error(self, planned: Planned, error: str) -> None:
        owners = [o for o in planned.owners if o in self.jobs]
        if len(owners) > 1 and not planned.isolated:
            log.warning("batch of %d jobs failed (%s): re-running each job alone", len(owners), error)
            self.planner.retry_isolated(planned)  # type: ignore[arg-type]
            return
        for owner in owners:
            self.fail(owner, f"EngineError: {error}", "engine_error", retry=True)  # type: ignore[arg-type]

    # --- upkeep ------------------------------------------------------------------------------
    def check_engine(self, now: float, *, limit: float) -> None:
        """An engine call that never returns (a wedged GPU, a deadlocked runtime) cannot be
        interrupted from Python; heartbeating its jobs forever would keep them from every other
        worker.  So the worker exits non-zero, its heartbeats stop, and recovery retries its jobs
        elsewhere -- each such attempt costs the job one rq retry, so a text that always hangs
        ends failed instead of looping."""
        since = self.runner.busy_since
        if since is not None and now - since > limit:
            raise engine_hung(now - since, limit, f"its {len(self.jobs)} job(s)")

    def heartbeat(self, *, ttl: int, now: float) -> None:
        """Extend the started-registry entry of every job held (recovery's deadline), drop those
        recovery already took away, and fail (rq Retry applies) those past their timeout."""
        items = list(self.jobs)
        for start in range(0, len(items), HEARTBEAT_CHUNK):
            chunk = items[start : start + HEARTBEAT_CHUNK]
            lost = set(self.store.heartbeat([i.running for i in chunk], ttl=ttl, now=time.time()))
            for item in chunk:
                if item.job_id in lost:
                    self.lost(item)
        for item in self.jobs.overdue(now):
            self.fail(item, f"JobTimeoutException: not done within {item.timeout}s", "timeout", retry=True)

    # --- ends --------------------------------------------------------------------------------
    def fail(self, item: WorkItem, reason: str, kind: str, *, retry: bool) -> None:
        """Fail an open job (written by the next `_write`); its pending rows are not run."""
        if self.jobs.fail(item, reason, kind, retry=retry):
            self.planner.drop(item)

    def lost(self, item: WorkItem) -> None:
        """Recovery gave an open job to another worker: forget it, write nothing for it."""
        if self.jobs.drop(item):
            log.warning("job %s: execution expired and was recovered elsewhere; dropping it", item.job_id)
            self.planner.drop(item)

    def _write(self) -> int:
        """Hand what is done to the finishing thread, write failures; returns how many jobs went
        back on a queue (rq Retry)."""
        self._reap(timeout=0.0)
        done = self.jobs.take_done()
        if done:
            self.finisher.submit(done)  # it slices the writes
        retried = self._write_failures()
        if not len(self.jobs) and not self.tokenizing:
            self.planner.forget_dropped()
        self.metrics.pending_texts.set(self.jobs.texts)
        return retried

    def _write_failures(self) -> int:
        failures, refusals = self.jobs.unwritten
        if not failures and not refusals:
            return 0
        self.failures.refuse(refusals)  # both are safe to repeat after a lost reply
        retried = self.failures.fail(failures)
        self.jobs.written()
        for kind in [r.kind for r in refusals] + [f.kind for f in failures]:
            self.metrics.failure(kind)
        failed = len(refusals) + len(failures) - len(retried)
        self.metrics.jobs("retried", len(retried))
        self.metrics.jobs("failed", failed)
        self.jobs.tally.failed += failed
        return len(retried)

    def _reap(self, *, timeout: float) -> None:
        """Count what the finishing thread wrote; its crash ends the worker."""
        report = self.finisher.poll(timeout)
        while report is not None:
            if isinstance(report, WriterCrashed):
                raise WorkerCrashed(f"finishing thread crashed: {report.error!r}") from report.error
            done = report.jobs - len(report.skipped)
            self.jobs.tally.finished += done
            self.metrics.jobs("finished", done)
            report = self.finisher.poll(0.0)
