"""Finished jobs back to Redis, on a thread of their own: results, status, registries.

All the jobs a batch (or several) completed are finished by one script call (`JobStore.finish`:
the result in rq's result stream through the job's serializer, status, finished registry, the
execution ended), only for executions still this worker's.  A few interactive results are
written at once on the calling thread instead (`INLINE_ROWS`): a query's answer then waits for
no hop and no bulk write.  Failures are not written here but by `failures.FailureWriter`, on the
main thread.
"""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from rq.utils import now as rq_now
from rq.utils import utcformat

from vecq.producer.connection import CONNECTION_LOST
from vecq.producer.serializer import MsgpackSerializer

from .jobstore import Finished, JobStore
from .validation import WorkItem

log = logging.getLogger(__name__)


def finished(item: WorkItem, vectors: np.ndarray) -> Finished:
    """The finish record of a job: its vectors in the dtype and encoding it asked for."""
    arr = np.ascontiguousarray(vectors, dtype=item.result_dtype)
    if item.raw:  # the bytes as they are, their shape beside them
        return Finished(item.running, item.started_at, item.result_ttl, arr.tobytes(), raw_shape(arr))
    return Finished(item.running, item.started_at, item.result_ttl, encode_result(arr))


def raw_shape(arr: np.ndarray) -> str:
    """`SHAPE_FIELD` of a raw result: "n,dim,<numpy dtype>"."""
    n, dim = arr.shape
    return f"{n},{dim},{arr.dtype.str}"


def encode_result(vectors: np.ndarray) -> str:
    """A job's vectors as rq's result stream stores a return value: base64 of the serializer's
    bytes.  Byte for byte `MsgpackSerializer.dumps(vectors)`, but the msgpack header of an
    (n, dim) array depends only on (n, dim) and its dtype, so it is built once per shape and the
    rows are appended as they are -- no per-job msgpack calls."""
    arr = np.ascontiguousarray(vectors)
    prefix = _header(arr.shape, arr.dtype.str)
    return base64.b64encode(prefix + arr.tobytes()).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _header(shape: tuple[int, ...], dtype: str) -> bytes:
    zeros = np.zeros(shape, dtype=dtype)
    packed = MsgpackSerializer.dumps(zeros)
    assert packed.endswith(zeros.tobytes()), "msgpack array layout changed (vecq bug)"
    return packed[: len(packed) - zeros.nbytes]


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
#: Interactive results of at most this many vectors are written on the calling thread, at once:
#: the hop to the finishing thread, and the wait behind the take the main thread sends meanwhile
#: or the bulk slice the thread is writing, sat between a lone query's vectors and its client.
INLINE_ROWS = 64


class Finisher:
    """The one owner of finishing jobs: a thread fed through a queue, so that Redis writing the
    results of batch k (on its own core) overlaps the main thread taking and tokenizing batch
    k+1.  Redis being away is retried with capped backoff; anything else is reported as
    `WriterCrashed`, never swallowed."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
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
        self.in_flight += 1
        self.texts_in_flight += texts
        if priority == 0 and texts <= INLINE_ROWS:
            self._write_now(chunk, texts)
        else:
            self.inbox.put((priority, next(self._order), texts, chunk))

    def _write_now(self, chunk: list[tuple[WorkItem, np.ndarray]], texts: int) -> None:
        """Write `chunk` on this thread, reported through `poll` as the thread's writes are;
        with Redis away it goes to the thread, which retries with backoff."""
        try:
            skipped = self._finish_once(chunk)
        except CONNECTION_LOST:
            self.inbox.put((0, next(self._order), texts, chunk))
            return
        except Exception as exc:  # as on the thread: reported, and the worker exits
            log.exception("finishing %d interactive job(s) failed", len(chunk))
            self.results.put(WriterCrashed(exc))
            return
        self.results.put(Written(len(chunk), skipped, texts))

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
        while True:
            try:
                return self._finish_once(done)
            except CONNECTION_LOST as exc:
                log.warning(
                    "finishing %d job(s): Redis unreachable (%s); retrying in %.1fs", len(done), exc, wait
                )
                time.sleep(wait)
                wait = min(wait * 2, 30.0)

    def _finish_once(self, done: list[tuple[WorkItem, np.ndarray]]) -> list[str]:
        records = [finished(i, v) for i, v in done]
        skipped = self.store.finish(records, now=time.time(), now_iso=utcformat(rq_now()))
        if skipped:
            log.warning(
                "%d job(s) finished here after recovery gave them to another worker; result dropped: %s",
                len(skipped),
                ", ".join(skipped[:5]),
            )
        return skipped
