"""Admission: which taken jobs may run.  Pure: no Redis, no clock of its own, no state.

Redis is not trusted.  Every job is decoded alone with vecq's msgpack (zlib undone; a pickle is
named, never loaded) and checked: rq's `(function, instance, args, kwargs)` tuple, vecq's job
function, a meta map, then the request against the wire contract (`contract.fast_request` for
the common case, `contract.parse_request` to word the refusal of anything else).  A bad job --
garbage data, a pickle, a hash without `data`, someone else's function, an unknown option,
another model -- becomes a `Rejected` with a one-line reason, and the rest go on.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from dataclasses import dataclass, field
from datetime import datetime

from vecq.engines.batching import dimensions_fault
from vecq.engines.errors import BadInput
from vecq.engines.prompts import Prompts, apply
from vecq.producer.contract import (
    DEADLINE_KEY,
    JOB_FUNCTION,
    RESULT_DTYPES,
    JobRequest,
    fast_request,
    parse_request,
)
from vecq.producer.errors import BadRequest
from vecq.producer.serializer import SERIALIZER_PATH, MsgpackSerializer, SerializationError

from .errors import JobRefused
from .jobstore import Running, Taken

log = logging.getLogger(__name__)

#: Metrics label → the exception name a refused job's reason starts with.
_LABELS = {
    "bad_request": "BadRequest",
    "wrong_model": "BadRequest",
    "pickle": "UnsafePayload",
    "deadline": "DeadlineExceeded",
}


@dataclass(eq=False, slots=True)
class WorkItem:
    """A validated, started job: what the planner, the engine and the writers need of it."""

    running: Running
    lane: str
    texts: list[str]
    truncate: bool
    result_dtype: str  # numpy's name: <f4 or <f2
    raw: bool  # result bytes in the entry's vectors field, not rq's return value
    result_ttl: int
    timeout: int  # seconds it may stay open before it is failed: its own rq timeout, else the worker's
    started_at: float  # wall clock, seconds
    taken_at: float  # monotonic
    queue_wait: float | None  # seconds from enqueue to start, when the job says when it was enqueued
    dimensions: int | None = None  # Matryoshka: the vectors are cut to this many components
    query: str | None = None  # a rerank job's: each text is scored as the pair (query, text)

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

    @property
    def job_id(self) -> str:
        return self.raw_id.decode("utf-8", "replace")


@dataclass(frozen=True)
class Admission:
    """The rules of one worker: its queues (priority order), lanes, model and defaults."""

    queue_names: list[str]
    lanes: list[str]
    model: str
    default_result_ttl: int
    default_timeout: int
    dim: int = 0  # the model's vector size (0: unknown, `dimensions` unchecked)
    prompts: Prompts = field(default_factory=Prompts)
    pairs: bool = False  # a reranker's rules: every job carries a query, none a prompt

    def admit(
        self, taken: list[Taken], *, now_wall: float, now: float
    ) -> tuple[list[WorkItem], list[Rejected]]:
        """Validate each taken job alone; never raises for a bad job."""
        items: list[WorkItem] = []
        rejected: list[Rejected] = []
        for t in taken:
            queue = self.queue_names[t.queue_index]
            try:
                request = self._validate(t, now_wall)
                prompt = self._prompt(request)
            except JobRefused as exc:
                # a flood of expired queries is normal after an outage: not one warning each
                (log.debug if exc.kind == "deadline" else log.warning)("job %s refused: %s", t.job_id, exc)
                reason = f"{_LABELS.get(exc.kind, 'InvalidJob')}: {exc}"
                rejected.append(Rejected(queue, t.raw_id, reason, exc.kind, t.execution_id))
                continue
            _data, _meta, result_ttl, enqueued, timeout = t.fields
            enq = _timestamp(enqueued)
            items.append(
                WorkItem(
                    running=Running(t.job_id, queue, t.execution_id),  # type: ignore[arg-type]
                    lane=self.lanes[t.queue_index],
                    texts=request.texts if prompt is None else apply(prompt, request.texts),
                    truncate=request.truncate,
                    result_dtype=RESULT_DTYPES[request.result_dtype],
                    raw=request.raw,
                    result_ttl=_int(result_ttl, self.default_result_ttl),
                    timeout=_timeout(timeout, self.default_timeout),
                    started_at=now_wall,
                    taken_at=now,
                    queue_wait=None if enq is None else max(0.0, now_wall - enq),
                    dimensions=request.dimensions,
                    query=request.query,
                )
            )
        return items, rejected

    def _prompt(self, request: JobRequest) -> str | None:
        """The prompt to prepend (None: none), after the model's own checks of the request: its
        prompt names and its vector size, and the job's kind.  Raises `JobRefused` in one line."""
        fault = self._kind_fault(request)
        if fault is not None:
            raise JobRefused("bad_request", fault)
        fault = dimensions_fault(request.dimensions, self.dim) if self.dim else None
        if fault is not None:
            raise JobRefused("bad_request", fault)
        if request.prompt_name is None and request.prompt is None and self.prompts.default_name is None:
            return None  # the usual job: no prompt asked, none by default
        try:
            return self.prompts.resolve(prompt_name=request.prompt_name, prompt=request.prompt) or None
        except BadInput as exc:
            raise JobRefused("bad_request", str(exc)) from None

    def _kind_fault(self, request: JobRequest) -> str | None:
        """Why a job cannot run on this model's kind (embedding or reranking), or None."""
        if not self.pairs:
            if request.query is not None:
                return "query: this model embeds texts; a rerank job needs a cross-encoder model"
            return None
        if request.query is None:
            return "query: missing; this model is a reranker (a job's options carry the query)"
        if request.prompt_name is not None or request.prompt is not None:
            return "prompt: a rerank job takes no prompt"
        if not request.truncate:
            return "truncate: a rerank job's pairs are always cut as CrossEncoder cuts them"
        return None

    def _validate(self, t: Taken, now_wall: float) -> JobRequest:
        """The request of a job that may run, else `JobRefused` with a one-line reason."""
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
        deadline = meta.get(DEADLINE_KEY)
        if isinstance(deadline, int | float) and not isinstance(deadline, bool) and now_wall > deadline:
            raise JobRefused(
                "deadline",
                f"taken {now_wall - deadline:.1f}s after its deadline (nobody waits for it); not computed",
            )
        fast = fast_request(args, kwargs, model=self.model)
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
        return JobRequest.of(request)


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


def _int(raw: bytes | None, default: int) -> int:
    try:
        return int(raw) if raw is not None and raw != b"" else default
    except ValueError:
        return default


def _timeout(raw: bytes | None, default: int) -> int:
    """A job's rq timeout; rq's -1 means none (a year stands for it)."""
    seconds = _int(raw, default)
    return seconds if seconds > 0 else 365 * 86400


def _timestamp(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.decode()).timestamp()
    except ValueError:
        return None
