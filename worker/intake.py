"""Carrying out takes: many jobs at once, started in the same script call, or sent ahead.

`TakePolicy` decides what to take; this module does it, through `JobStore`'s take script (LPOP
many, the job-hash fields, the started-registry entry and status of each job).  It also keeps
the two numbers takes need between calls: the running average of texts per job (to size a take
whose jobs do not say how many texts they hold) and the texts still owed to the model's
queued-texts counter (each take pays the previous one's).  What the taken jobs may do is
decided by `validation.Admission`, not here.
"""

from __future__ import annotations

import contextlib
import logging
import time

import redis
from redis import Redis
from rq.utils import now as rq_now
from rq.utils import utcformat

from vecq.producer.connection import CONNECTION_LOST
from vecq.producer.keys import queue_key, queued_texts_key

from .jobstore import JobStore, PendingTake, Taken
from .takepolicy import Take
from .validation import WorkItem

log = logging.getLogger(__name__)


class Intake:
    """Takes (and starts) jobs of one model's queues, priority order."""

    def __init__(
        self, connection: Redis, store: JobStore, queue_names: list[str], *, model: str, heartbeat_ttl: int
    ) -> None:
        self.connection = connection
        self.store = store
        self.queue_names = queue_names
        self.model = model
        self.heartbeat_ttl = heartbeat_ttl
        self._texts_per_job = 4.0
        self._owed_texts = 0  # admitted, not yet off the queued-texts counter
        self._ahead: PendingTake | None = None
        self._ahead_error: redis.RedisError | None = None  # its connection was found closed
        self._waiter: int | None = None  # client id of a wait for jobs in progress
        self._woken = False

    # --- takes sent ahead --------------------------------------------------------------------
    @property
    def ahead(self) -> bool:
        """A take was sent ahead and its reply not collected yet (its jobs are already started)."""
        return self._ahead is not None

    def ahead_ready(self) -> bool:
        """The take sent ahead has its reply waiting (collecting it will not block)."""
        if self._ahead is None:
            return False
        try:
            return bool(self._ahead.connection.can_read(timeout=0))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            # redis-py has closed the connection: collecting the take raises this and drops it
            # (reading the closed connection would fail in redis-py itself, not as a lost one)
            self._ahead_error = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
            return True

    def abandon_ahead(self) -> None:
        """Forget a take sent ahead (its connection failed): the jobs it may have started are
        retried by recovery, as for a worker that died."""
        if self._ahead is not None:
            pending, self._ahead, self._ahead_error = self._ahead, None, None
            self.store.abandon(pending)

    def send_ahead(self, budget_texts: int) -> None:
        """Send the next take now without waiting: Redis runs it on its own core while this
        worker validates, tokenizes, writes back and waits for its engine, and the next `take`
        collects the reply.  Under a steady stream this hides the take's round trip, which
        otherwise held up the main thread a third of the time (BENCHMARKS.md).  Never raises for
        a lost connection: it is called with jobs just taken and not yet held, and only a head
        start is lost -- the next take meets the same error, in the worker's reconnect loop."""
        try:
            self._ahead = self.store.send_take(
                self.queue_names, self._max_jobs(budget_texts), **self._options(budget_texts)
            )
        except CONNECTION_LOST as exc:
            log.debug("take sent ahead failed (%s); the next take retries", exc)
            self._ahead = None

    # --- takes -------------------------------------------------------------------------------
    def take(self, take: Take) -> list[Taken]:
        """Every waiting job up to about `take.budget_texts` texts, started; waits up to
        `take.block_s` when none waits.  A take sent ahead is collected first, whatever `take`
        says (its jobs are started)."""
        if self._ahead is not None:
            pending, self._ahead = self._ahead, None
            error, self._ahead_error = self._ahead_error, None
            if error is not None:
                self.store.abandon(pending)
                raise error
            return self.store.read_take(pending)
        queues = self.queue_names[:1] if take.first_lane_only else self.queue_names
        taken = self._take(queues, take.budget_texts)
        if taken or take.block_s <= 0 or take.first_lane_only:
            return taken
        wait = take.block_s if len(self.queue_names) == 1 else min(take.block_s, 0.05)
        return self._wait_and_take(queues, take.budget_texts, wait)

    def _take(self, queues: list[str], budget_texts: int) -> list[Taken]:
        return self.store.take(queues, self._max_jobs(budget_texts), **self._options(budget_texts))

    def _max_jobs(self, budget_texts: int) -> int:
        return max(1, min(1024, int(budget_texts / max(self._texts_per_job, 1.0))))

    def _options(self, budget_texts: int, *, when_run: bool = False) -> dict[str, object]:
        """A take's arguments; hands what the queued-texts counter is owed to that take.
        `when_run`: its jobs start when Redis runs it (a take behind a wait), not now."""
        counter = (queued_texts_key(self.model), self._owed_texts)
        self._owed_texts = 0
        return {
            "ttl": self.heartbeat_ttl,
            "now": time.time(),
            "now_iso": "" if when_run else utcformat(rq_now()),
            "counter": counter,
            "budget_texts": budget_texts,
            "guess_texts": self._texts_per_job,
        }

    def texts_in(self, taken: list[Taken]) -> int:
        """Texts the taken jobs say they hold (the running average for those that do not say)."""
        guess = round(self._texts_per_job)
        return sum(guess if t.texts is None else t.texts for t in taken)

    def admitted(self, items: list[WorkItem]) -> None:
        """Count the jobs a take's admission let in: the next take takes their texts off the
        queued-texts counter, and they move the running average of texts per job."""
        if items:
            n = sum(len(i.texts) for i in items)
            self._owed_texts += n
            self._texts_per_job = 0.7 * self._texts_per_job + 0.3 * (n / len(items))

    def settle(self) -> None:
        """Take the texts of the last jobs taken off the queued-texts counter (at shutdown; while
        serving, every take does it for the one before)."""
        if self._owed_texts:
            self.connection.decrby(queued_texts_key(self.model), self._owed_texts)
            self._owed_texts = 0

    # --- waiting for a job -------------------------------------------------------------------
    def _wait_and_take(self, queues: list[str], budget_texts: int, wait: float) -> list[Taken]:
        """Block until the first queue holds a job or `wait` s pass, then take, in one exchange:
        the take is sent behind the wait (`JobStore.send_take`'s `wait`), so Redis runs it as
        soon as a job lands.  On a connection of its own, whose client id `wake` can unblock
        from another thread (asked before the wait, off the path of the job that ends it)."""
        pool = self.connection.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("CLIENT", "ID")
            try:
                self._waiter = conn.read_response()
            except redis.ResponseError:  # CLIENT ID refused by an ACL: this wait cannot be woken
                self._waiter = None
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse it
            pool.release(conn)
            self._waiter = None
            raise
        try:
            if self._woken:  # asked to stop before the wait began: `wake` may have missed it
                pool.release(conn)
                return []
            pending = self.store.send_take(
                queues,
                self._max_jobs(budget_texts),
                wait=(queue_key(self.queue_names[0]), wait),
                connection=conn,
                **self._options(budget_texts, when_run=True),  # type: ignore[arg-type]
            )
            return self.store.read_take(pending)  # gives the connection back, or closes it
        finally:
            self._waiter = None

    def wake(self) -> None:
        """From another thread: end a wait for jobs now (CLIENT UNBLOCK), so that a worker asked
        to stop does not sit out its idle wait -- a second at the end of every embedded `vecq
        embed` run.  A wake that races the wait's start is caught by `_woken`, or at worst the
        wait runs its course, as it does where an ACL refuses CLIENT UNBLOCK (a `@dangerous`
        command; only in-process stops use it, a signalled worker just finishes its wait)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None:
            with contextlib.suppress(redis.RedisError):
                self.connection.client_unblock(waiter)
