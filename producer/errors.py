"""Typed errors a producer sees. Messages are one line and never contain a password."""

from __future__ import annotations


class VecqError(Exception):
    """Base of every error raised by `vecq.producer`."""


class BadRequest(VecqError, ValueError):
    """The texts or options of a request break the wire contract, e.g. `texts[3]: expected str, got int`."""


class QueueFull(VecqError):
    """The model's queues already hold more texts than the configured limit (backpressure)."""

    def __init__(self, message: str, *, queued: int, limit: int) -> None:
        super().__init__(message)
        self.queued = queued
        self.limit = limit


class JobFailed(VecqError):
    """The worker failed the job; `reason` is the job's one-line `exc_string` tail.

    `chunk` is set when the job was one chunk of a bulk run, so the caller knows which rows.
    """

    def __init__(self, job_id: str, reason: str, *, chunk: int | None = None) -> None:
        where = f"job {job_id}" if chunk is None else f"chunk {chunk} (job {job_id})"
        super().__init__(f"{where} failed: {reason}")
        self.job_id = job_id
        self.reason = reason
        self.chunk = chunk


class JobNotFound(VecqError, LookupError):
    """Neither the job nor a result exists: a wrong id, or it expired (ttl) or was deleted."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found (never enqueued, expired or deleted)")
        self.job_id = job_id


class JobTimeout(VecqError, TimeoutError):
    """No result arrived in time; the job may still finish later (its id says where to look)."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"job {job_id} has no result after {timeout:g}s")
        self.job_id = job_id


class RedisUnavailable(VecqError, ConnectionError):
    """Redis could not be reached; the message names the URL with its password masked."""
