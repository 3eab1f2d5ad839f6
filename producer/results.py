"""Reading job results from rq's result streams (`rq:results:<job id>`), sync and async.

rq 3.0 writes each execution's outcome as an entry of a Redis stream, so waiting is one
`XREAD BLOCK` (no polling).  `Job.latest_result(timeout=)` does the same but takes whole seconds
and stops at the first entry, while an entry can be a RETRIED marker with the real outcome still
to come; so vecq runs the XREAD itself and decodes each entry with rq's own `Result.restore`,
always through `MsgpackSerializer` (never pickle).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import redis
import redis.asyncio
from rq.results import Result

from .connection import RetryPolicy, acall, call
from .contract import RESULT_DTYPES, SHAPE_FIELD, VECTORS_FIELD
from .errors import JobFailed, JobNotFound, JobTimeout
from .keys import job_key, result_key
from .serializer import MsgpackSerializer

#: Longest single XREAD BLOCK: a dead connection is noticed at least this often.
MAX_BLOCK_MS = 10_000  # must stay under connection.READ_TIMEOUT_S (a test checks)
Entry = tuple[bytes, Mapping[bytes, bytes]]


def last_line(exc_string: str | None) -> str:
    """The one-line reason of a traceback: its last non-empty line."""
    lines = [line.strip() for line in (exc_string or "").splitlines() if line.strip()]
    return lines[-1] if lines else "failed without a message"


def decode_entry(job_id: str, entry_id: bytes, payload: Mapping[bytes, bytes]) -> np.ndarray | None:
    """The vectors of a successful entry; None for a RETRIED marker; `JobFailed` for a failure."""
    raw = payload.get(_VECTORS)
    if raw is not None and payload.get(b"type") == b"1":
        return raw_vectors(job_id, raw, payload.get(_SHAPE))
    try:
        result = Result.restore(
            job_id, entry_id.decode(), dict(payload), connection=None, serializer=MsgpackSerializer
        )  # type: ignore[arg-type]
    except Exception as exc:  # a foreign or corrupted entry must not look like success
        raise JobFailed(job_id, f"undecodable result ({type(exc).__name__}: {exc})") from None
    kind = result.type
    if kind == Result.Type.SUCCESSFUL:
        return as_vectors(job_id, result.return_value)
    if kind == Result.Type.RETRIED:
        return None
    if kind == Result.Type.MAX_RETRIES_EXCEEDED:
        raise JobFailed(job_id, "gave up after its last retry")
    if kind == Result.Type.STOPPED:
        raise JobFailed(job_id, "stopped before it finished")
    raise JobFailed(job_id, last_line(result.exc_string))


_VECTORS, _SHAPE = VECTORS_FIELD.encode(), SHAPE_FIELD.encode()
_RAW_DTYPES = frozenset(RESULT_DTYPES.values())


def raw_vectors(job_id: str, raw: bytes, shape: bytes | None) -> np.ndarray:
    """A raw result's vectors, read with one `np.frombuffer` (float16 widened to float32)."""
    try:
        n, dim, dtype = (shape or b"").decode().split(",")
        if dtype not in _RAW_DTYPES:
            raise ValueError(f"dtype {dtype!r}")
        vectors = np.frombuffer(raw, dtype=dtype).reshape(int(n), int(dim))
    except ValueError as exc:  # a foreign or corrupted entry must not look like success
        raise JobFailed(job_id, f"undecodable raw result ({exc})") from None
    return vectors.astype(np.float32)  # a writable copy, float32 whatever Redis held


def as_vectors(job_id: str, value: Any) -> np.ndarray:
    """The job's return value as a writable float32 (n, dim) array, or `JobFailed` if it is not one."""
    if not isinstance(value, np.ndarray) or value.ndim != 2:
        shape = getattr(value, "shape", None)
        raise JobFailed(job_id, f"result is not a 2-D array ({type(value).__name__}, shape {shape})")
    return np.require(value, dtype=np.float32, requirements=["C", "W"])


def entries_of(response: Any) -> list[tuple[str, list[Entry]]]:
    """XREAD's reply as [(stream key, entries)], for RESP2 (a list) and RESP3 (a dict) alike."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3: {key: [[entry, ...]]}
        items = [
            (key, value[0] if value and isinstance(value[0], list) else value)
            for key, value in response.items()
        ]
    else:  # RESP2: [[key, [entry, ...]], ...]
        items = [(key, value) for key, value in response]
    return [
        (key.decode() if isinstance(key, bytes) else str(key), [(e[0], e[1]) for e in entries])
        for key, entries in items
    ]


def scan(job_id: str, entries: Sequence[Entry]) -> tuple[np.ndarray | None, bytes | None]:
    """The outcome among `entries` (vectors or None for "still waiting") and the last id seen."""
    last = None
    for entry_id, payload in entries:
        last = entry_id
        vectors = decode_entry(job_id, entry_id, payload)
        if vectors is not None:
            return vectors, last
    return None, last


class ResultWait:
    """The I/O-free half of waiting for one job's outcome, shared by the sync and async waits:
    where to read from, how long to block, what a reply means.  The caller does the reads."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.job_id = job_id
        self.key = result_key(job_id)
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cursor = b"0-0"

    def first(self, response: Any, exists: Any) -> np.ndarray | None:
        """The outcome already in the stream (the first read, with whether the job hash exists):
        `JobNotFound` when the job has neither a hash nor a result."""
        vectors, last = _from(self.job_id, response)
        if vectors is None and not exists and last is None:
            raise JobNotFound(self.job_id)
        self.cursor = last or self.cursor
        return vectors

    def block_ms(self) -> int:
        """How long the next XREAD may block; `JobTimeout` once the deadline has passed."""
        if self.deadline is None:
            return MAX_BLOCK_MS
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise JobTimeout(self.job_id, self.timeout or 0.0)
        return max(1, min(MAX_BLOCK_MS, int(left * 1000)))

    def read(self, response: Any) -> np.ndarray | None:
        """The outcome in a blocking read's reply, or None (keep waiting from the new cursor)."""
        vectors, last = _from(self.job_id, response)
        self.cursor = last or self.cursor
        return vectors


def wait(
    conn: redis.Redis,
    job_id: str,
    timeout: float | None,
    *,
    policy: RetryPolicy,
    url: str,
    just_sent: bool = False,
) -> np.ndarray:
    """Block until the job's outcome: vectors, `JobFailed`, `JobNotFound` or `JobTimeout`.

    `just_sent`: the caller enqueued the job a moment ago, so it exists and the first read may
    block at once (from the stream's start, which returns an entry already there): the looking
    read with its EXISTS is one round trip less beside a query's ~1.6 ms."""
    w = ResultWait(job_id, timeout)

    def first() -> tuple[Any, Any]:
        pipe = conn.pipeline(transaction=False)
        pipe.xread({w.key: w.cursor})
        pipe.exists(job_key(job_id))
        return tuple(pipe.execute())

    vectors = None if just_sent else w.first(*call(policy, url, first))
    while vectors is None:
        block = w.block_ms()
        vectors = w.read(call(policy, url, lambda b=block: conn.xread({w.key: w.cursor}, block=b)))  # type: ignore[misc]
    return vectors


async def await_result(
    conn: redis.asyncio.Redis, job_id: str, timeout: float | None, *, policy: RetryPolicy, url: str
) -> np.ndarray:
    """`wait` for redis.asyncio: the event loop runs while XREAD blocks."""
    w = ResultWait(job_id, timeout)

    async def first() -> tuple[Any, Any]:
        pipe = conn.pipeline(transaction=False)
        pipe.xread({w.key: w.cursor})
        pipe.exists(job_key(job_id))
        return tuple(await pipe.execute())

    vectors = w.first(*(await acall(policy, url, first)))
    while vectors is None:
        block = w.block_ms()
        vectors = w.read(await acall(policy, url, lambda b=block: conn.xread({w.key: w.cursor}, block=b)))  # type: ignore[misc]
    return vectors


def _from(job_id: str, response: Any) -> tuple[np.ndarray | None, bytes | None]:
    streams = entries_of(response)
    return scan(job_id, streams[0][1]) if streams else (None, None)
