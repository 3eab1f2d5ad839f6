"""Writing vecq jobs into Redis through rq's own enqueue path, many per round trip.

rq builds the jobs and chooses their writes (`Queue.prepare_data` + `Queue.enqueue_many` on a
pipeline), so stock rq tools (`rq info`, `rq requeue`, dashboards) see ordinary jobs and an rq
upgrade changes vecq's writes with it.  vecq adds only the queued-texts counter.  What it
changes is how the pipeline's commands travel: not as MULTI, each command, EXEC (eight commands
and eight replies for one interactive job, which cost redis-py ~80 µs of packing and parsing
beyond the round trip), but as one script that runs them in order (`_RUN_QUEUED`): as atomic as
the transaction, one command, one reply (BENCHMARKS.md, issue 14, thirteenth session).

The script's writes run back to back, no other client's command between them, and a write
Redis refuses (a replica's READONLY, maxmemory's OOM) refuses the first of them (SADD), so it
lands whole or not at all.  Every job id is chosen before the write, so after a
connection error the enqueuer asks Redis whether the first job carries this attempt's
`enqueued_at`: if so the write landed and is not repeated (no job is ever enqueued twice).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import redis
from rq import Queue, Retry
from rq.job import Job
from rq.queue import EnqueueData
from rq.utils import utcformat

from .connection import RetryPolicy, call, is_refused, is_transient, unavailable
from .contract import DEADLINE_KEY, JOB_FUNCTION, META_KEY, TEXTS_FIELD, WIRE_VERSION, EmbedRequest
from .keys import queued_texts_key
from .serializer import MsgpackSerializer
from .settings import ProducerSettings


@dataclass(frozen=True)
class JobOptions:
    """The rq job options vecq sets on every job (from `ProducerSettings`)."""

    retries: int = 3
    result_ttl: int = 3600
    failure_ttl: int = 7 * 86400
    ttl: int | None = None
    timeout: int = 600

    @classmethod
    def from_settings(cls, settings: ProducerSettings) -> JobOptions:
        return cls(
            retries=settings.job_retries,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            ttl=settings.job_ttl,
            timeout=settings.job_timeout,
        )


class VecqJob(Job):
    """rq's `Job`, with its data stored uncompressed.

    rq zlib-compresses every job's data when it writes the hash (`Job.to_dict`) and reads
    uncompressed data as it is (`Job.restore` falls back to it), as do vecq's workers.  Texts
    compress to half, but zlib cost a bulk producer 5 µs per text -- a third of its CPU -- and
    the worker as much again to undo it; Redis memory for queued texts is what it gives up.
    `tests/producer/test_client.py` reads such a job back through stock rq."""

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        data = self.data
        self._data = b""  # rq compresses this stand-in; the real data goes in as it is
        try:
            obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        obj["data"] = data
        return obj


#: The commands rq queued on a pipeline, run in order by one script: ARGV[1] is their msgpack
#: array of arrays of strings (raw strings: Valkey's cmsgpack rejects msgpack's bin type).
_RUN_QUEUED = """
local commands = cmsgpack.unpack(ARGV[1])
for i = 1, #commands do redis.call(unpack(commands[i])) end
return #commands
"""


def new_job_id() -> str:
    """A fresh job id, known before the write so a retried write can be checked for."""
    return str(uuid.uuid4())


class Enqueuer:
    """Writes batches of (request, job id) as rq jobs, one atomic script call per batch."""

    def __init__(
        self, connection: redis.Redis, *, url: str, options: JobOptions, policy: RetryPolicy
    ) -> None:
        self.connection = connection
        self.url = url
        self.options = options
        self.policy = policy
        self._queues: dict[str, Queue] = {}
        self._run_queued = connection.register_script(_RUN_QUEUED)
        self._encode = connection.get_encoder().encode

    def queue(self, name: str) -> Queue:
        """One rq Queue per name, kept so rq asks the server version once, not per job."""
        if name not in self._queues:
            self._queues[name] = Queue(
                name, connection=self.connection, serializer=MsgpackSerializer, job_class=VecqJob
            )
        return self._queues[name]

    def enqueue(
        self, items: Sequence[tuple[EmbedRequest, str]], *, deadline_s: float | None = None
    ) -> list[Job]:
        """Enqueue every item in one round trip; returns the rq Jobs in the order given.
        `deadline_s`: seconds from now after which no worker should start them (`DEADLINE_KEY`)."""
        assert items, "Enqueuer.enqueue called with nothing to enqueue (vecq bug)"
        deadline = None if deadline_s is None else time.time() + deadline_s
        delays = self.policy.delays()
        while True:
            jobs, pipe = call(self.policy, self.url, lambda: self._prepare(items, deadline))
            try:
                self._write(pipe)
                return jobs
            except Exception as exc:
                if not is_transient(exc):
                    if is_refused(exc):  # credentials, permissions
                        raise unavailable(self.url, exc) from None
                    raise
                # The reply was lost, maybe not the write: repeat only what did not land.
                if call(self.policy, self.url, lambda: self._landed(jobs[0])):  # noqa: B023 (called at once)
                    return jobs
                delay = next(delays, None)
                if delay is None:
                    raise unavailable(self.url, exc) from None
                time.sleep(delay)
            finally:
                pipe.reset()

    def _write(self, pipe: redis.client.Pipeline) -> None:
        """Run the commands queued on `pipe` (never executed itself) as one script."""
        encode = self._encode  # numbers as redis-py sends them; text and bytes go as they are
        commands = [
            [arg if isinstance(arg, str | bytes) else encode(arg) for arg in args]
            for args, _ in pipe.command_stack
        ]
        self._run_queued(args=[msgpack.packb(commands, use_bin_type=False)])

    def _prepare(
        self, items: Sequence[tuple[EmbedRequest, str]], deadline: float | None
    ) -> tuple[list[Job], redis.client.Pipeline]:
        pipe = self.connection.pipeline(transaction=False)  # a recorder: `_write` sends it
        jobs: list[Job] = []
        texts_per_model: dict[str, int] = {}
        for queue_name, group in _by_queue(items).items():
            datas = [self._job_data(request, job_id, deadline) for request, job_id in group]
            queued = self.queue(queue_name).enqueue_many(datas, pipeline=pipe)
            for job, (request, _) in zip(queued, group, strict=True):
                pipe.hset(job.key, TEXTS_FIELD, len(request.texts))
            jobs += queued
            for request, _ in group:
                texts_per_model[request.model] = texts_per_model.get(request.model, 0) + len(request.texts)
        for model, n in texts_per_model.items():
            pipe.incrby(queued_texts_key(model), n)
        order = {job_id: i for i, (_, job_id) in enumerate(items)}
        jobs.sort(key=lambda job: order[job.id])
        return jobs, pipe

    def _job_data(self, request: EmbedRequest, job_id: str, deadline: float | None) -> EnqueueData:
        o = self.options
        meta: dict[str, object] = {META_KEY: WIRE_VERSION}
        if deadline is not None:
            meta[DEADLINE_KEY] = deadline
        return Queue.prepare_data(
            JOB_FUNCTION,
            args=[request.texts],
            kwargs=request.job_kwargs(),
            timeout=o.timeout,
            result_ttl=o.result_ttl,
            ttl=o.ttl,
            failure_ttl=o.failure_ttl,
            # rq's default description embeds the texts: keep them out of dashboards and logs.
            description=f"vecq embed {len(request.texts)} texts ({request.model}, {request.lane})",
            job_id=job_id,
            meta=meta,
            retry=Retry(max=o.retries) if o.retries else None,
        )

    def _landed(self, job: Job) -> bool:
        stored = self.connection.hget(job.key, "enqueued_at")
        return (
            stored is not None
            and job.enqueued_at is not None
            and stored.decode() == utcformat(job.enqueued_at)
        )


def _by_queue(items: Sequence[tuple[EmbedRequest, str]]) -> dict[str, list[tuple[EmbedRequest, str]]]:
    groups: dict[str, list[tuple[EmbedRequest, str]]] = {}
    for request, job_id in items:
        groups.setdefault(request.queue, []).append((request, job_id))
    return groups
