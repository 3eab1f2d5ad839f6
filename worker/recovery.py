"""Getting jobs of dead workers done again, within seconds rather than rq's ~14 minutes.

Two places can hold a job whose worker died:

- rq's started registry: the worker was killed mid-batch.  Its executions stop being
  heartbeated, their short TTL runs out, and rq's own `StartedJobRegistry.cleanup` (run here
  every few seconds, with vecq's serializer) requeues each job through its rq `Retry`, or fails
  it with `AbandonedJobError` when no retries are left.
- the intermediate list: a stock rq worker (or an older vecq worker) moved the job there
  (LMOVE) but died before starting it -- vecq's own take starts jobs in the same script, so it
  never leaves any there.  rq fails such jobs after minutes; vecq puts them back at the front
  of their queue, since no work was done on them.  A job must be seen there on two passes at
  least `stranded_after` apart, so a live worker between take and start is never robbed.

One worker at a time cleans a queue (a short lock per queue), however many run.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from rq.registry import StartedJobRegistry

from vecq.producer.keys import cleanup_lock_key, intermediate_key, stranded_key
from vecq.producer.serializer import MsgpackSerializer

from .jobstore import JobStore

log = logging.getLogger(__name__)


class Recovery:
    """Periodic started-registry and intermediate-list cleanup for a worker's queues."""

    def __init__(
        self,
        connection: Redis,
        store: JobStore,
        queue_names: list[str],
        *,
        interval: float,
        stranded_after: float,
    ) -> None:
        self.connection = connection
        self.store = store
        self.queue_names = queue_names
        self.interval = interval
        self.stranded_after = stranded_after
        self._next = 0.0

    def maybe_run(self, now: float) -> None:
        """Run a cleanup pass if one is due (monotonic `now`)."""
        if now < self._next:
            return
        self._next = now + self.interval
        for name in self.queue_names:
            if self.connection.set(
                cleanup_lock_key(name), self.store.worker_name, nx=True, px=max(1, int(self.interval * 900))
            ):
                self.clean(name)

    def clean(self, queue_name: str) -> tuple[int, int]:
        """One pass over one queue; returns (expired executions handled, stranded jobs put back)."""
        registry = StartedJobRegistry(queue_name, connection=self.connection, serializer=MsgpackSerializer)
        expired = len(registry.get_expired_job_ids())
        if expired:
            log.warning(
                "queue %s: %d job(s) of dead workers: retrying (or failing, without retries left)",
                queue_name,
                expired,
            )
            registry.cleanup()
        return expired, self.put_back_stranded(queue_name)

    def put_back_stranded(self, queue_name: str, *, now: float | None = None) -> int:
        """Requeue ids that sat in the intermediate list unstarted for `stranded_after` seconds."""
        now = time.time() if now is None else now
        inter = intermediate_key(queue_name)
        seen_key = stranded_key(queue_name)
        ids = self.connection.lrange(inter, 0, -1)
        seen = self.connection.hgetall(seen_key)
        current = set(ids)
        gone = [k for k in seen if k not in current]
        moved = 0
        with self.connection.pipeline(transaction=False) as pipe:
            if gone:
                pipe.hdel(seen_key, *gone)
            for job_id in current:
                first = seen.get(job_id)
                if first is None:
                    pipe.hsetnx(seen_key, job_id, now)
                elif now - float(first) >= self.stranded_after and self.store.put_back(queue_name, job_id):
                    pipe.hdel(seen_key, job_id)
                    moved += 1
            pipe.expire(seen_key, int(self.stranded_after * 10) + 60)
            pipe.execute()
        if moved:
            log.warning("queue %s: %d job(s) stranded in the intermediate list put back", queue_name, moved)
        return moved
