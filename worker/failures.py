"""The one writer of job failures: jobs refused at intake, and started jobs that failed.

Both are written only for executions still in rq's started registry, so a write repeated after
a lost reply writes nothing twice, and a job that recovery gave to another worker meanwhile is
left to it.
- A started job's failure goes through rq's own functions, as rq's `handle_job_failure` does:
  `Execution.delete`, then `job.retry` (back on its queue, its texts back on the queued-texts
  counter) when it has retries left, else status failed with its one-line reason.
- A refused job never runs, so it fails at once without retry, in one lean MULTI: rq's failure
  bookkeeping (status, exc_info, failed registry, a FAILED result entry) without fetching the
  job, which may not even decode.  An id without a job hash was only popped, and is dropped.
"""

from __future__ import annotations

import logging
import time
import zlib

from redis import Redis
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.utils import now as rq_now
from rq.utils import utcformat

from vecq.producer.keys import failed_key, job_key, started_key
from vecq.producer.serializer import MsgpackSerializer

from .jobstore import JobStore
from .openjobs import Failure
from .validation import Rejected

log = logging.getLogger(__name__)


class FailureWriter:
    """Ends failed and refused jobs in Redis, many per round trip."""

    def __init__(self, connection: Redis, store: JobStore, *, counter_key: str) -> None:
        self.connection = connection
        self.store = store
        self.counter_key = counter_key  # the model's queued-texts counter

    def fail(self, failures: list[Failure]) -> list[Failure]:
        """rq's handle_job_failure for many jobs in one pipeline; returns the ones retried."""
        if not failures:
            return []
        failures = self._still_ours(failures)
        jobs = Job.fetch_many(
            [f.item.job_id for f in failures], connection=self.connection, serializer=MsgpackSerializer
        )
        retried: list[Failure] = []
        with self.connection.pipeline() as pipe:
            for f, job in zip(failures, jobs, strict=True):
                if job is None:
                    continue
                if self._fail_one(pipe, f, job):
                    retried.append(f)
                    pipe.incrby(self.counter_key, len(f.item.texts))
                pipe.hincrby(self.store.worker_key, "failed_job_count", 1)
            pipe.execute()
        for f in failures:
            log.info("job %s %s: %s", f.item.job_id, "retried" if f in retried else "failed", f.reason)
        return retried

    def _still_ours(self, failures: list[Failure]) -> list[Failure]:
        """Leave out jobs whose execution recovery already took away (another worker has them)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for f in failures:
                r = f.item.running
                pipe.zscore(started_key(r.queue), f"{r.job_id}:{r.execution_id}")
            scores = pipe.execute()
        return [f for f, s in zip(failures, scores, strict=True) if s is not None]

    def _fail_one(self, pipe, f: Failure, job: Job) -> bool:
        run, worker = f.item.running, self.store.worker_name
        queue = Queue(run.queue, connection=self.connection, serializer=MsgpackSerializer)
        execution = Execution(run.execution_id, run.job_id, connection=self.connection, worker_name=worker)
        execution.delete(job=job, pipeline=pipe)
        if f.retry and job.should_retry:
            job.retry(queue, pipe)
            return True
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(f.reason, pipe, worker_name=worker, execution_id=run.execution_id)
        return False

    def refuse(self, rejected: list[Rejected]) -> None:
        """Fail refused jobs in one MULTI: only those whose execution is still started (or, for
        one the take could not start -- a hash without data -- that exist and are not failed)."""
        if not rejected:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for rej in rejected:
                pipe.zscore(started_key(rej.queue), f"{rej.job_id}:{rej.execution_id}")
                pipe.exists(job_key(rej.job_id))
                pipe.hmget(job_key(rej.job_id), "status", "failure_ttl")
            found = pipe.execute()
        now_wall, now_iso = time.time(), utcformat(rq_now())
        with self.connection.pipeline(transaction=True) as pipe:
            for n, rej in enumerate(rejected):
                started, exists, (status, failure_ttl) = found[3 * n : 3 * n + 3]
                if rej.execution_id is not None:
                    if started is None:  # refused already, or recovered elsewhere
                        continue
                    pipe.zrem(started_key(rej.queue), f"{rej.job_id}:{rej.execution_id}")
                elif not exists or status == b"failed":
                    continue
                ttl = _failure_ttl(failure_ttl)
                self._write_refusal(pipe, rej, ttl, now_wall=now_wall, now_iso=now_iso)
            pipe.execute()

    def _write_refusal(self, pipe, rej: Rejected, ttl: int, *, now_wall: float, now_iso: str) -> None:
        key = job_key(rej.job_id)
        pipe.hset(
            key,
            mapping={"status": "failed", "ended_at": now_iso, "exc_info": zlib.compress(rej.reason.encode())},
        )
        if ttl > 0:
            pipe.expire(key, ttl)
        pipe.zadd(failed_key(rej.queue), {rej.job_id: "+inf" if ttl < 0 else now_wall + ttl})
        Result(
            rej.job_id,
            Result.Type.FAILED,
            connection=self.connection,
            exc_string=rej.reason,
            worker_name=self.store.worker_name,
            serializer=MsgpackSerializer,
        ).save(ttl=ttl, pipeline=pipe)
        pipe.hincrby(self.store.worker_key, "failed_job_count", 1)


def _failure_ttl(raw: bytes | None) -> int:
    """The job's own failure TTL, else rq's default (a garbage value counts as none)."""
    try:
        return int(raw) if raw else DEFAULT_FAILURE_TTL
    except ValueError:
        return DEFAULT_FAILURE_TTL
