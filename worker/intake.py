"""Taking jobs from Redis: many at once, started in the same step, each validated alone.

The worker blocks on its highest-priority queue only when it has nothing else to do; otherwise
it takes every waiting job up to its prefetch budget in one script call (LPOP many, the
job-hash fields, and the started-registry entry and status of each job).  Redis is not trusted: every job is
decoded with vecq's msgpack serializer (never pickle) and its request re-validated against the
wire contract, and a bad job -- garbage data, a pickle, a hash without `data`, someone else's
function, an unknown option -- fails alone with a one-line reason while the rest go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime

import redis
from redis import Redis
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.results import Result
from rq.utils import now as rq_now
from rq.utils import utcformat

from vecq.producer.connection import CONNECTION_LOST
from vecq.producer.contract import (
    DEFAULT_MODEL,
    JOB_FUNCTION,
    MAX_CHARS_PER_JOB,
    MAX_CHARS_PER_TEXT,
    MAX_TEXTS_PER_JOB,
    OPTION_NAMES,
    parse_request,
)
from vecq.producer.errors import BadRequest
from vecq.producer.keys import LANES, queue_key, queued_texts_key
from vecq.producer.serializer import SERIALIZER_PATH, MsgpackSerializer, SerializationError

from .jobstore import JobStore, PendingTake, Running, Taken

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class WorkItem:
    """A validated, started job: what the planner, the engine and the writer need of it."""

    running: Running
    lane: str
    texts: list[str]
    truncate: bool
    result_ttl: int
    started_at: float  # wall clock, seconds
    taken_at: float  # monotonic
    queue_wait: float | None  # seconds from enqueue to start, when the job says when it was enqueued

    @property
    def job_id(self) -> str:
        return self.running.job_id


@dataclass(frozen=True)
class Rejected:
    """A job refused at intake: it fails at once, alone, with `reason` as its exc_string."""

    queue: str
    raw_id: bytes
    reason: str
    kind: str  # metrics label: missing, undecodable, pickle, not_vecq, bad_request, wrong_model
    execution_id: str | None  # the take started it (None: an id with no job hash behind it)


class JobRefused(Exception):
    """Internal: why a taken job cannot run (`kind`, one-line message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Intake:
    """Takes (and starts), validates and refuses jobs of one model's queues (priority order)."""

    connection: Redis
    store: JobStore
    queue_names: list[str]
    lanes: list[str]
    model: str
    heartbeat_ttl: int
    default_result_ttl: int
    _texts_per_job: float = field(default=4.0, init=False)
    _owed_texts: int = field(default=0, init=False)  # taken, not yet off the queued-texts counter
    _ahead: PendingTake | None = field(default=None, init=False)
    _waiter: int | None = field(default=None, init=False)  # client id of a wait for jobs in progress
    _woken: bool = field(default=False, init=False)

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
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return True  # collecting it raises the error and drops the take

    def abandon_ahead(self) -> None:
        """Forget a take sent ahead (its connection failed): the jobs it may have started are
        retried by recovery, as for a worker that died."""
        if self._ahead is not None:
            pending, self._ahead = self._ahead, None
            self.store.abandon(pending)

    def send_ahead(self, budget_texts: int) -> None:
        """Send the next take now without waiting: Redis runs it on its own core while this
        worker validates, tokenizes, writes back and waits for its engine, and the next `take`
        collects the reply.  Under a steady stream this hides the take's round trip, which
        otherwise held up the main thread a third of the time (BENCHMARKS.md).  Never raises for
        a lost connection: it is called with jobs just taken and not yet held, and only a head
        start is lost -- the next take meets the same error, in the worker's reconnect loop."""
        max_jobs = self._max_jobs(budget_texts)
        try:
            self._ahead = self.store.send_take(self.queue_names, max_jobs, **self._take_options(budget_texts))
        except CONNECTION_LOST as exc:
            log.debug("take sent ahead failed (%s); the next take retries", exc)
            self._ahead = None

    def take(self, budget_texts: int, *, block_s: float, first_lane_only: bool = False) -> list[Taken]:
        """Every waiting job up to about `budget_texts` texts, started; blocks up to `block_s`
        when none waits.  `first_lane_only`: only the highest-priority lane (interactive).  A take
        sent ahead is collected first, whatever the arguments (its jobs are started)."""
        if self._ahead is not None:
            pending, self._ahead = self._ahead, None
            return self.store.read_take(pending)
        max_jobs = self._max_jobs(budget_texts)
        if first_lane_only:
            return self._take(max_jobs, budget_texts, lanes=1)
        taken = self._take(max_jobs, budget_texts)
        if taken or block_s <= 0:
            return taken
        first = queue_key(self.queue_names[0])
        wait = block_s if len(self.queue_names) == 1 else min(block_s, 0.05)
        if not self._wait_for_job(first, wait) and len(self.queue_names) == 1:
            return []
        return self._take(max_jobs, budget_texts)

    def _wait_for_job(self, key: str, wait: float) -> bool:
        """Block until `key` holds a job or `wait` s pass, without taking it (BLMOVE of a list
        onto its own head; the take that follows starts it atomically).  On a connection of its
        own, whose client id `wake` can unblock from another thread."""
        pool = self.connection.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(
                conn.pack_commands([("CLIENT", "ID"), ("BLMOVE", key, key, "LEFT", "LEFT", wait)])
            )
            try:
                self._waiter = conn.read_response()
            except redis.ResponseError:  # CLIENT ID refused by an ACL: this wait cannot be woken
                self._waiter = None
            if self._woken:  # asked to stop before the wait began: `wake` may have missed it
                conn.disconnect()
                return False
            return conn.read_response() is not None
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse it
            raise
        finally:
            self._waiter = None
            pool.release(conn)

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

    def _take(self, max_jobs: int, budget_texts: int, *, lanes: int | None = None) -> list[Taken]:
        return self.store.take(self.queue_names[:lanes], max_jobs, **self._take_options(budget_texts))

    def _max_jobs(self, budget_texts: int) -> int:
        return max(1, min(1024, int(budget_texts / max(self._texts_per_job, 1.0))))

    def _take_options(self, budget_texts: int) -> dict[str, object]:
        """A take's arguments; hands what the queued-texts counter is owed to that take."""
        counter = (queued_texts_key(self.model), self._owed_texts)
        self._owed_texts = 0
        return {
            "ttl": self.heartbeat_ttl,
            "now": time.time(),
            "now_iso": utcformat(rq_now()),
            "counter": counter,
            "budget_texts": budget_texts,
            "guess_texts": self._texts_per_job,
        }

    def texts_in(self, taken: list[Taken]) -> int:
        """Texts the taken jobs say they hold (the running average for those that do not say)."""
        guess = round(self._texts_per_job)
        return sum(guess if t.texts is None else t.texts for t in taken)

    def settle(self) -> None:
        """Take the texts of the last jobs taken off the queued-texts counter (at shutdown; while
        serving, every take does it for the one before)."""
        if self._owed_texts:
            self.connection.decrby(queued_texts_key(self.model), self._owed_texts)
            self._owed_texts = 0

    def admit(self, taken: list[Taken], *, now_wall: float) -> tuple[list[WorkItem], list[Rejected]]:
        """Validate each taken job alone; never raises for a bad job."""
        items: list[WorkItem] = []
        rejected: list[Rejected] = []
        mono = time.monotonic()
        for t in taken:
            queue = self.queue_names[t.queue_index]
            try:
                texts, truncate = self._validate(t)
            except JobRefused as exc:
                log.warning("job %s refused: %s", t.job_id, exc)
                rejected.append(
                    Rejected(queue, t.raw_id, f"{_label(exc.kind)}: {exc}", exc.kind, t.execution_id)
                )
                continue
            enq = _timestamp(t.fields[3])
            result_ttl = _int(t.fields[2])
            items.append(
                WorkItem(
                    running=Running(t.job_id, queue, t.execution_id),  # type: ignore[arg-type]
                    lane=self.lanes[t.queue_index],
                    texts=texts,
                    truncate=truncate,
                    result_ttl=self.default_result_ttl if result_ttl is None else result_ttl,
                    started_at=now_wall,
                    taken_at=mono,
                    queue_wait=None if enq is None else max(0.0, now_wall - enq),
                )
            )
        if items:
            n = sum(len(i.texts) for i in items)
            self._owed_texts += n
            self._texts_per_job = 0.7 * self._texts_per_job + 0.3 * (n / len(items))
        return items, rejected

    # --- validation --------------------------------------------------------------------------
    def _validate(self, t: Taken) -> tuple[list[str], bool]:
        """(texts, truncate) of a job that may run, else `JobRefused` with a one-line reason."""
        data, meta_raw = t.fields[0], t.fields[1]
        if data is None or t.execution_id is None:
            raise JobRefused("missing", "job hash missing or without a 'data' field (not an rq job)")
        payload = decode_payload(data)
        if not isinstance(payload, (list, tuple)) or len(payload) != 4:
            raise JobRefused("undecodable", "job data: expected (function, instance, args, kwargs)")
        func_name, instance, args, kwargs = payload
        if func_name != JOB_FUNCTION:
            raise JobRefused(
                "not_vecq", f"job function: {str(func_name)[:100]!r} is not vecq's ({JOB_FUNCTION})"
            )
        if instance is not None:
            raise JobRefused("not_vecq", "job instance: vecq jobs call a function, not a method")
        meta = decode_payload(meta_raw, what="job meta") if meta_raw else {}
        if not isinstance(meta, dict):
            raise JobRefused("undecodable", f"job meta: expected a map, got {type(meta).__name__}")
        fast = self._fast_request(args, kwargs)
        if fast is not None:
            return fast
        try:
            request = parse_request(args, kwargs)
        except BadRequest as exc:
            raise JobRefused("bad_request", str(exc)) from None
        if request.model != self.model:
            raise JobRefused(
                "wrong_model", f"model: {request.model!r} is not served here (this queue is {self.model!r})"
            )
        return request.texts, request.truncate

    def _fast_request(self, args: object, kwargs: object) -> tuple[list[str], bool] | None:
        """The common request checked in plain Python (~20x cheaper than the pydantic model);
        None for anything unusual, which `parse_request` then decides on and words the error
        for.  msgpack only yields valid UTF-8 str, so the encoding check is implied."""
        if type(args) is not list or len(args) != 1 or type(kwargs) is not dict:
            return None
        texts = args[0]
        if type(texts) is not list or not texts or len(texts) > MAX_TEXTS_PER_JOB:
            return None
        total = 0
        for text in texts:
            if type(text) is not str or len(text) > MAX_CHARS_PER_TEXT:
                return None
            total += len(text)
        if total > MAX_CHARS_PER_JOB or not kwargs.keys() <= OPTION_NAMES:
            return None
        truncate = kwargs.get("truncate", True)
        if kwargs.get("model", DEFAULT_MODEL) != self.model or kwargs.get("lane", "interactive") not in LANES:
            return None
        return (texts, truncate) if type(truncate) is bool else None

    def refuse(self, rejected: list[Rejected]) -> None:
        """rq's failure bookkeeping, lean, in one MULTI: end the execution the take started,
        status, exc_info, failed registry and a failure result.  Written only for a job whose
        execution is still in the started registry (or, for one the take could not start -- a
        hash without data -- that is not failed yet): so a call repeated after a lost reply
        writes nothing twice, and a job recovery gave to another worker meanwhile is left to it.
        An id without a job hash was only popped, and is dropped."""
        keys = self.store.keys
        now_wall, now_iso = time.time(), utcformat(rq_now())
        ids = [rej.raw_id.decode("utf-8", "replace") for rej in rejected]
        with self.connection.pipeline(transaction=False) as pipe:
            for rej, job_id in zip(rejected, ids, strict=True):
                pipe.zscore(keys.started + rej.queue, f"{job_id}:{rej.execution_id}")
                pipe.exists(keys.job + job_id)
                pipe.hmget(keys.job + job_id, "status", "failure_ttl")
            found = pipe.execute()
        with self.connection.pipeline(transaction=True) as pipe:
            for n, (rej, job_id) in enumerate(zip(rejected, ids, strict=True)):
                started, exists, (status, failure_ttl) = found[3 * n : 3 * n + 3]
                if rej.execution_id is not None:
                    if started is None:  # refused already, or recovered elsewhere
                        continue
                    pipe.zrem(keys.started + rej.queue, f"{job_id}:{rej.execution_id}")
                elif not exists or status == b"failed":
                    continue
                self._write_refusal(pipe, rej, _int(failure_ttl), now_wall=now_wall, now_iso=now_iso)
            pipe.execute()

    def _write_refusal(
        self, pipe, rej: Rejected, failure_ttl: int | None, *, now_wall: float, now_iso: str
    ) -> None:
        keys = self.store.keys
        job_id = rej.raw_id.decode("utf-8", "replace")
        ttl = DEFAULT_FAILURE_TTL if failure_ttl is None else failure_ttl
        pipe.hset(
            keys.job + job_id,
            mapping={
                "status": "failed",
                "ended_at": now_iso,
                "exc_info": zlib.compress(rej.reason.encode()),
            },
        )
        if ttl > 0:
            pipe.expire(keys.job + job_id, ttl)
        pipe.zadd(keys.failed + rej.queue, {job_id: "+inf" if ttl < 0 else now_wall + ttl})
        Result(
            job_id,
            Result.Type.FAILED,
            connection=self.connection,
            exc_string=rej.reason,
            worker_name=self.store.worker_name,
            serializer=MsgpackSerializer,
        ).save(ttl=ttl, pipeline=pipe)
        pipe.hincrby(self.store.worker_key, "failed_job_count", 1)


def decode_payload(raw: bytes, *, what: str = "job data") -> object:
    """A job field through vecq's msgpack (rq may have zlib-compressed it); pickles are named, not run."""
    if raw[:1] == b"\x78":  # a zlib header (rq compresses job data, not meta): skip a raise
        with contextlib.suppress(zlib.error):
            raw = zlib.decompress(raw)
    if raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise JobRefused(
            "pickle", f"{what}: a pickle payload; vecq never unpickles (producers must use {SERIALIZER_PATH})"
        )
    try:
        return MsgpackSerializer.loads(raw)
    except SerializationError as exc:
        raise JobRefused("undecodable", f"{what}: not vecq msgpack ({exc})") from None


def _int(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None and raw != b"" else None
    except ValueError:
        return None


def _timestamp(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.decode()).timestamp()
    except ValueError:
        return None


def _label(kind: str) -> str:
    return {"bad_request": "BadRequest", "wrong_model": "BadRequest", "pickle": "UnsafePayload"}.get(
        kind, "InvalidJob"
    )
