"""Settings: one typed object per process kind, every field an env var with the `VECQ_` prefix.

`CommonSettings` holds the variables every vecq process reads, so each has one meaning
everywhere: producers write `result_ttl` and `job_timeout` into every job, and workers apply a
job's own values (their settings count only for jobs that carry none, e.g. from stock rq
producers).  Read when a client or worker is constructed (never at import), so a process can set
`VECQ_REDIS_URL` after importing vecq.  Producer-only fields are named so they cannot collide
with the worker's `VECQ_*` variables (e.g. `VECQ_MODEL` is the worker's model dir).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class CommonSettings(BaseSettings):
    """What producers and workers must agree on."""

    model_config = SettingsConfigDict(env_prefix="VECQ_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        description="Redis URL (redis://, rediss://, unix://, redis+sentinel://).",
        json_schema_extra={"flag": "--redis"},
    )
    result_ttl: int = Field(
        default=3600, ge=1, description="Seconds a finished job and its result stay readable."
    )
    job_timeout: int = Field(
        default=600,
        ge=1,
        description="Seconds a started job may take before it is failed (rq's job timeout).",
    )


class ProducerSettings(CommonSettings):
    """How producers write jobs and talk to Redis."""

    #: Backpressure: refuse (or wait) when a model's queues hold more texts than this. None: off.
    max_queued_texts: int | None = Field(default=None, ge=1)
    #: rq `Retry(max=...)` on every job: a worker killed mid-batch costs a retry, not the job.
    job_retries: int = Field(default=3, ge=0)
    #: Seconds a failed job stays in rq's failed registry (for `rq requeue` and inspection).
    failure_ttl: int = Field(default=7 * 86400, ge=1)
    #: Seconds a job may wait in the queue before rq drops it; None: wait for a worker forever.
    job_ttl: int | None = Field(default=None, ge=1)
    #: Attempts for a Redis call that failed with a connection error, with capped, growing waits.
    connect_attempts: int = Field(default=5, ge=1)
    retry_backoff_cap: float = Field(default=2.0, gt=0)
    socket_connect_timeout: float = Field(default=5.0, gt=0)
