"""Vectors back to their jobs, and jobs back to Redis: results, failures, retries.

`Assembler` puts each engine row into its job's (n, dim) float32 array at the text's index, so
a job's vectors come out in its own order however its texts were batched.  `Writer` ends jobs:
all the jobs a batch (or several) completed are finished by one script call (result in rq's
results stream through the job's serializer, status, finished registry, execution cleanup);
failures go through rq's own functions in one pipeline -- a job with retries left is requeued
by `job.retry` exactly as rq's `handle_job_failure` does, the others get status failed, their
one-line reason as `exc_string`, and a failed-registry entry.
"""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np
from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import now as rq_now
from rq.utils import utcformat

from vecq.producer.connection import CONNECTION_LOST
from vecq.producer.serializer import MsgpackSerializer

from .intake import WorkItem
from .jobstore import Finished, JobStore

log = logging.getLogger(__name__)


class Assembler:
    """Per-job output arrays, filled row by row as batches come back."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._open: dict[Hashable, tuple[np.ndarray, list[int]]] = {}

    def open(self, item: WorkItem) -> None:
        self._open[item] = (np.empty((len(item.texts), self.dim), dtype=np.float32), [len(item.texts)])

    def __contains__(self, item: object) -> bool:
        return item in self._open

    def __len__(self) -> int:
        return len(self._open)

    def fill(
        self, owners: Iterable[tuple[Hashable, int]], vectors: np.ndarray
    ) -> list[tuple[WorkItem, np.ndarray]]:
        """Place each row's vector; returns the jobs this completed, with their arrays."""
        done: list[tuple[WorkItem, np.ndarray]] = []
        for r, (owner, index) in enumerate(owners):
            slot = self._open.get(owner)
            if slot is None:  # its job already failed: the row is dropped
                continue
            out, left = slot
            out[index] = vectors[r]
            left[0] -= 1
            if left[0] == 0:
                del self._open[owner]
                done.append((owner, out))  # type: ignore[arg-type]
        return done

    def discard(self, item: Hashable) -> None:
        self._open.pop(item, None)


@dataclass(frozen=True)
class Failure:
    """A started job that cannot finish: its one-line reason, and whether rq Retry applies."""

    item: WorkItem
    reason: str
    kind: str  # metrics label
    retry: bool = True


def encode_result(vectors: np.ndarray) -> str:
    """A job's vectors as rq's result stream stores a return value: base64 of the serializer's
    bytes.  Byte for byte `MsgpackSerializer.dumps(vectors)`, but the msgpack header of a
    float32 (n, dim) array depends only on (n, dim), so it is built once per shape and the
    rows are appended as they are -- no per-job msgpack calls."""
    arr = np.ascontiguousarray(vectors, dtype="<f4")
    prefix = _header(arr.shape)
    return base64.b64encode(prefix + arr.tobytes()).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _header(shape: tuple[int, ...]) -> bytes:
    zeros = np.zeros(shape, dtype="<f4")
    packed = MsgpackSerializer.dumps(zeros)
    assert packed.endswith(zeros.tobytes()), "msgpack array layout changed (vecq bug)"
    return packed[: len(packed) - zeros.nbytes]


class Writer:
    """Ends jobs in Redis, many per round trip."""

    def __init__(self, connection: Redis, store: JobStore) -> None:
        self.connection = connection
        self.store = store

    def finish(self, done: list[tuple[WorkItem, np.ndarray]], *, now: float, now_iso: str) -> list[str]:
        """Write successes; returns ids skipped because their execution was recovered meanwhile."""
        records = [Finished(i.running, i.started_at, i.result_ttl, encode_result(v)) for i, v in done]
        return self.finish_records(records, now=now, now_iso=now_iso)

    def finish_records(self, records: list[Finished], *, now: float, now_iso: str) -> list[str]:
        if not records:
            return []
        skipped = self.store.finish(records, now=now, now_iso=now_iso)
        if skipped:
            log.warning(
                "%d job(s) finished here after recovery gave them to another worker; result dropped: %s",
                len(skipped),
                ", ".join(skipped[:5]),
            )
        return skipped

    def fail(
        self, failures: list[Failure], *, worker_name: str, worker_key: str, counter_key: str
    ) -> list[Failure]:
        """rq's handle_job_failure for many jobs in one pipeline; returns the ones requeued (their
        texts go back on the producers' queued-texts counter)."""
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
                if self._fail_one(pipe, f, job, worker_name):
                    retried.append(f)
                    pipe.incrby(counter_key, len(f.item.texts))
                pipe.hincrby(worker_key, "failed_job_count", 1)
            pipe.execute()
        for f in failures:
            log.info("job %s %s: %s", f.item.job_id, "retried" if f in retried else "failed", f.reason)
        return retried

    def _still_ours(self, failures: list[Failure]) -> list[Failure]:
        """Leave out jobs whose execution recovery already took away (another worker has them)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for f in failures:
                r = f.item.running
                pipe.zscore(self.store.keys.started + r.queue, f"{r.job_id}:{r.execution_id}")
            scores = pipe.execute()
        return [f for f, s in zip(failures, scores, strict=True) if s is not None]

    def _fail_one(self, pipe, f: Failure, job: Job, worker_name: str) -> bool:
        run = f.item.running
        queue = Queue(run.queue, connection=self.connection, serializer=MsgpackSerializer)
        execution = Execution(
            run.execution_id, run.job_id, connection=self.connection, worker_name=worker_name
        )
        execution.delete(job=job, pipeline=pipe)
        retry = f.retry and job.should_retry
        if retry:
            job.retry(queue, pipe)
            return True
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(f.reason, pipe, worker_name=worker_name, execution_id=run.execution_id)
        return False


@dataclass(frozen=True)
class Written:
    """A finish call done: how many jobs (and texts) it ended, and the ids it skipped
    (recovered elsewhere)."""

    jobs: int
    skipped: list[str]
    texts: int = 0


@dataclass(frozen=True)
class WriterCrashed:
    """The finishing thread hit an error that is not Redis being away: the worker must exit."""

    error: BaseException


#: Bulk vectors per finishing write, about (see `Finisher.submit`).
SLICE_ROWS = 512


class Finisher:
    """The one owner of finishing jobs: a thread fed through a queue, so that Redis writing the
    results of batch k (on its own core) overlaps the main thread taking and tokenizing batch
    k+1.  Redis being away is retried with capped backoff; anything else is reported as
    `WriterCrashed`, never swallowed."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        #: (priority, order, texts, chunk): interactive chunks (0) are written before bulk ones
        #: (1) already waiting, so a lone interactive result never queues behind megabytes of
        #: bulk results; the stop marker (2) comes after everything.
        self.inbox: queue.PriorityQueue[tuple[int, int, int, list[tuple[WorkItem, np.ndarray]] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self.results: queue.Queue[Written | WriterCrashed] = queue.Queue()
        self.in_flight = 0  # chunks submitted and not yet reported; main thread only
        self.texts_in_flight = 0  # their texts: still started in Redis, so still the worker's
        self._thread = threading.Thread(target=self._main, name="vecq-finish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, done: list[tuple[WorkItem, np.ndarray]]) -> None:
        """Queue `done` for writing in slices of about `SLICE_ROWS` vectors, interactive jobs'
        slices ahead of bulk ones already waiting: a write in progress is not interrupted, and a
        lone interactive result waited ~200 ms behind one 4,096-vector bulk write (6 MB) on a
        2-core machine.  Slices also let Redis write one while the next is being encoded."""
        for priority, interactive in ((0, True), (1, False)):
            chunk: list[tuple[WorkItem, np.ndarray]] = []
            rows = 0
            for item in done:
                if (item[0].lane == "interactive") != interactive:
                    continue
                chunk.append(item)
                rows += len(item[1])
                if rows >= SLICE_ROWS:
                    self._put(priority, chunk)
                    chunk, rows = [], 0
            if chunk:
                self._put(priority, chunk)

    def _put(self, priority: int, chunk: list[tuple[WorkItem, np.ndarray]]) -> None:
        texts = sum(len(vectors) for _, vectors in chunk)
        self.inbox.put((priority, next(self._order), texts, chunk))
        self.in_flight += 1
        self.texts_in_flight += texts

    def poll(self, timeout: float = 0.0) -> Written | WriterCrashed | None:
        """The next report, waiting up to `timeout` seconds."""
        try:
            out = self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
        except queue.Empty:
            return None
        self.in_flight -= 1
        if isinstance(out, Written):
            self.texts_in_flight -= out.texts
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self.inbox.put((2, next(self._order), 0, None))
            self._thread.join(timeout)

    def _main(self) -> None:
        while True:
            _, _, texts, done = self.inbox.get()
            if done is None:
                return
            try:
                self.results.put(Written(len(done), self._finish(done), texts))
            except BaseException as exc:  # report, never die silently
                log.exception("finishing thread crashed")
                self.results.put(WriterCrashed(exc))
                return

    def _finish(self, done: list[tuple[WorkItem, np.ndarray]]) -> list[str]:
        wait = 0.5
        records = [Finished(i.running, i.started_at, i.result_ttl, encode_result(v)) for i, v in done]
        while True:
            try:
                return self.writer.finish_records(records, now=time.time(), now_iso=utcformat(rq_now()))
            except CONNECTION_LOST as exc:
                log.warning(
                    "finishing %d job(s): Redis unreachable (%s); retrying in %.1fs", len(done), exc, wait
                )
                time.sleep(wait)
                wait = min(wait * 2, 30.0)
