"""Bulk corpus submission: chunk texts into jobs on the `bulk` lane, windowed, resumable.

The engine of `vecq embed`.  Chunk k of run R is job `vecq-bulk-R-<k:08d>`: ids are
deterministic, so a re-run with the same run id (e.g. a hash of the input file) finds the jobs of
an interrupted run in Redis and adopts them instead of computing them again, and `skip` leaves
out chunks the caller already wrote.  At most `window` texts are in flight; each finished chunk
is yielded, then its job and result are deleted, so Redis holds O(window) however large the
corpus.  Results are awaited with one XREAD BLOCK over every in-flight result stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from rq.job import Job

from . import backpressure
from .client import Client
from .connection import call
from .contract import DEFAULT_MODEL, MAX_TEXTS_PER_JOB, ResultDtype
from .errors import BadRequest, JobFailed, JobTimeout
from .keys import finished_key, job_key, job_keys, model_name, queue_name, result_key
from .results import MAX_BLOCK_MS, entries_of, scan
from .serializer import MsgpackSerializer

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
#: Statuses of an earlier run's job that will still produce a result: adopt it, don't redo it.
_ALIVE = {b"queued", b"started", b"finished", b"scheduled", b"deferred"}
#: Chunks in the first submit of a run; each later submit may hold twice as many as the last.
#: A whole first window in one write (32k texts) kept a GPU worker idle ~0.1 s while the
#: producer built it -- 5-9 % of a 50k-text run on the H200 (BENCHMARKS.md, issue 14).
FIRST_SUBMIT_CHUNKS = 2


@dataclass
class BulkStats:
    """What a run did, for progress bars and tests."""

    chunks_enqueued: int = 0
    chunks_adopted: int = 0
    chunks_done: int = 0
    texts_done: int = 0
    max_in_flight_texts: int = 0


@dataclass
class _InFlight:
    """Chunks submitted and not yet yielded: job id -> (chunk index, texts), stream cursors."""

    chunks: dict[str, tuple[int, int]] = field(default_factory=dict)
    cursors: dict[str, bytes] = field(default_factory=dict)
    texts: int = 0

    def add(self, job_id: str, index: int, n: int) -> None:
        self.chunks[job_id] = (index, n)
        self.cursors[job_id] = b"0-0"
        self.texts += n

    def pop(self, job_id: str) -> tuple[int, int]:
        index, n = self.chunks.pop(job_id)
        del self.cursors[job_id]
        self.texts -= n
        return index, n


class BulkSubmitter:
    """Embed a corpus as chunked bulk jobs: `run(texts)` yields `(chunk_index, vectors)`.

    Chunks finish in any order; chunk k holds texts [k*chunk_size, (k+1)*chunk_size).  A failed
    chunk raises `JobFailed` with `.chunk` set.  Stopping early (closing the generator) leaves the
    in-flight jobs in Redis for a re-run with the same `run_id` to adopt (they expire with the
    client's result_ttl).  `stall_timeout`: raise `JobTimeout` if no chunk finishes for that long.
    Results travel raw (the vectors' bytes, no base64: `contract.VECTORS_FIELD`), as float32 or,
    with `result_dtype="float16"`, at half the bytes.
    """

    def __init__(
        self,
        client: Client,
        *,
        run_id: str,
        model: str | None = None,
        chunk_size: int = 256,
        window: int = 8192,
        truncate: bool = True,
        stall_timeout: float | None = None,
        result_dtype: ResultDtype = "float32",
        prompt_name: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
    ) -> None:
        if not _RUN_ID.match(run_id):
            raise BadRequest(f"run_id: {run_id!r} must be 1-80 characters of A-Z, a-z, 0-9, '_', '-'")
        if not 1 <= chunk_size <= MAX_TEXTS_PER_JOB:
            raise BadRequest(f"chunk_size: {chunk_size} is not in 1..{MAX_TEXTS_PER_JOB}")
        if window < chunk_size:
            raise BadRequest(f"window: {window} texts is smaller than one chunk ({chunk_size})")
        self.client = client
        self.run_id = run_id
        self.model = model_name(model or DEFAULT_MODEL)
        self.chunk_size = chunk_size
        self.window = window
        self.truncate = truncate
        self.stall_timeout = stall_timeout
        self.result_dtype = result_dtype
        #: the model options of every chunk (`Client.submit`): a run id must differ when they do
        self.options = {"prompt_name": prompt_name, "prompt": prompt, "dimensions": dimensions}
        client.request(["-"], model=self.model, **self.options)  # refused here, not on the first chunk
        self.stats = BulkStats()
        self._submit_chunks = FIRST_SUBMIT_CHUNKS  # the ramp: most chunks the next submit may hold
        self._ramp_held = False  # the last submit stopped at that limit, with room for more

    def job_id(self, chunk: int) -> str:
        """The deterministic job id of a chunk of this run."""
        return f"vecq-bulk-{self.run_id}-{chunk:08d}"

    def run(
        self, texts: Iterable[str], *, skip: Collection[int] = (), check: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(chunk_index, vectors)` as chunks finish; chunks in `skip` are not submitted.

        `check` is called between waits (at least every `MAX_BLOCK_MS`): it may raise to end the
        run, e.g. when the worker this run depends on has died.
        """
        chunks = self._chunks(texts, skip)
        flight = _InFlight()
        waiting: tuple[int, list[str]] | None = next(chunks, None)
        while waiting is not None or flight.chunks:
            if check is not None:
                check()
            waiting = self._fill(chunks, waiting, flight)
            self.stats.max_in_flight_texts = max(self.stats.max_in_flight_texts, flight.texts)
            taken: list[str] = []
            try:  # while the ramp holds submits back, look for results without waiting for one
                for job_id, vectors in self._collect(flight, wait=not self._ramp_held):
                    index, n = flight.pop(job_id)
                    self.stats.chunks_done += 1
                    self.stats.texts_done += n
                    taken.append(job_id)
                    yield index, vectors
            finally:  # only chunks the caller has taken: a crash before this re-yields them
                if taken:
                    self._forget(taken)

    # --- submitting --------------------------------------------------------------------------
    def _chunks(self, texts: Iterable[str], skip: Collection[int]) -> Iterator[tuple[int, list[str]]]:
        it = iter(texts)
        index = 0
        while batch := list(islice(it, self.chunk_size)):
            if index not in skip:
                yield index, batch
            index += 1

    def _fill(
        self,
        chunks: Iterator[tuple[int, list[str]]],
        waiting: tuple[int, list[str]] | None,
        flight: _InFlight,
    ) -> tuple[int, list[str]] | None:
        """Submit chunks while the window (and the client's backpressure limit) has room."""
        room = self.window - flight.texts
        limit = self.client.max_queued_texts
        queued = self.client.queued_texts(self.model) if limit is not None else 0
        batch: list[tuple[int, list[str]]] = []
        while waiting is not None and len(waiting[1]) <= room and len(batch) < self._submit_chunks:
            if not backpressure.has_room(queued, len(waiting[1]), limit) and (batch or flight.chunks):
                break
            batch.append(waiting)
            room -= len(waiting[1])
            queued += len(waiting[1])
            waiting = next(chunks, None)
        self._ramp_held = (
            len(batch) == self._submit_chunks and waiting is not None and len(waiting[1]) <= room
        )
        if batch:
            self._submit(batch, flight)
            self._submit_chunks = 2 * len(batch)
        elif waiting is not None and not flight.chunks:
            time.sleep(0.05)  # over the backpressure limit with nothing of ours in flight
        return waiting

    def _submit(self, batch: list[tuple[int, list[str]]], flight: _InFlight) -> None:
        """One round trip to see which chunks an earlier run left, one atomic write for the rest."""
        conn = self.client.connection
        ids = [self.job_id(index) for index, _ in batch]

        def statuses() -> list[tuple[bytes | None, int]]:
            pipe = conn.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(job_key(job_id), "status")
                pipe.exists(result_key(job_id))
            replies = pipe.execute()
            return list(zip(replies[::2], replies[1::2], strict=True))

        found = call(self.client.policy, self.client.url, statuses)
        fresh, stale = [], []
        for (index, texts), job_id, (status, has_result) in zip(batch, ids, found, strict=True):
            if status in _ALIVE:
                self.stats.chunks_adopted += 1
            else:  # absent, or failed/stopped/canceled last time: compute it again
                if status is not None:
                    self._drop(job_id)
                elif has_result:  # the job expired before its result: that outcome is stale
                    stale.append(result_key(job_id))
                request = self.client.request(
                    texts, model=self.model, lane="bulk", truncate=self.truncate,
                    result_dtype=self.result_dtype, result_encoding="raw", **self.options,
                )  # fmt: skip
                fresh.append((request, job_id))
            flight.add(job_id, index, len(texts))
        if stale:
            call(self.client.policy, self.client.url, lambda: conn.delete(*stale))
        if fresh:
            self.client.enqueuer.enqueue(fresh)
            self.stats.chunks_enqueued += len(fresh)

    def _drop(self, job_id: str) -> None:
        """Delete an earlier run's failed job through rq (it lives in rq's failed registry)."""
        conn = self.client.connection
        Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer).delete()

    # --- collecting --------------------------------------------------------------------------
    def _collect(self, flight: _InFlight, *, wait: bool = True) -> list[tuple[str, np.ndarray]]:
        """Block until at least one in-flight chunk has an outcome (`wait` False: look once,
        without blocking); return the finished ones."""
        deadline = None if self.stall_timeout is None else time.monotonic() + self.stall_timeout
        while flight.chunks:
            block = MAX_BLOCK_MS if deadline is None else int((deadline - time.monotonic()) * 1000)
            block = max(1, min(block, MAX_BLOCK_MS)) if wait else None
            streams = {result_key(job_id): cursor for job_id, cursor in flight.cursors.items()}
            conn = self.client.connection
            response = call(self.client.policy, self.client.url, lambda: conn.xread(streams, block=block))  # noqa: B023 (called at once)
            done = self._outcomes(response, flight)
            if done or not wait:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                oldest = min(flight.chunks, key=lambda j: flight.chunks[j][0])
                raise JobTimeout(oldest, self.stall_timeout or 0.0)
        return []

    def _outcomes(self, response: object, flight: _InFlight) -> list[tuple[str, np.ndarray]]:
        done = []
        prefix = len(result_key(""))
        for key, entries in entries_of(response):
            job_id = key[prefix:]
            try:
                vectors, last = scan(job_id, entries)
            except JobFailed as exc:
                raise JobFailed(job_id, exc.reason, chunk=flight.chunks[job_id][0]) from None
            if last is not None:
                flight.cursors[job_id] = last
            if vectors is not None:
                done.append((job_id, vectors))
        return done

    def _forget(self, job_ids: list[str]) -> None:
        """Delete finished jobs, their results and registry entries in one round trip."""
        conn = self.client.connection
        registry = finished_key(queue_name(self.model, "bulk"))

        def delete() -> None:
            pipe = conn.pipeline(transaction=False)
            pipe.zrem(registry, *job_ids)
            for job_id in job_ids:
                pipe.delete(*job_keys(job_id))
            pipe.execute()

        call(self.client.policy, self.client.url, delete)
