"""`WorkerSettings`: every knob of a vecq worker, from `VECQ_*` env vars or CLI flags (1:1).

One typed object so that the CLI, embedded mode and tests build workers the same way; the
defaults are the ones a GPU worker on a shared Redis should run with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vecq.producer.keys import LANES


class WorkerSettings(BaseSettings):
    """What one `vecq worker` process serves and how it batches."""

    model_config = SettingsConfigDict(env_prefix="VECQ_", extra="forbid", frozen=True)

    redis_url: str = "redis://localhost:6379/0"
    #: A bundle dir (`vecq build` output) or a model dir; neither means the default model.
    bundle: Path | None = None
    model: Path | None = None
    #: onnx | torch | tensorrt | null; None: the bundle's own (torch for a model dir).
    backend: str | None = None
    device: str = "cpu"
    #: Lanes served, highest priority first is enforced (interactive before bulk) whatever the order.
    lanes: Annotated[tuple[str, ...], NoDecode] = LANES
    #: Model name the queues are derived from; None: the loaded model's own name.
    name: str | None = None
    worker_name: str | None = None
    #: How long the oldest text of a partial batch may wait for batch-mates.
    max_wait_ms: float = Field(default=5.0, ge=0)
    #: Texts taken from Redis but not yet written back, at most (the prefetch budget).
    prefetch_texts: int = Field(default=4096, ge=1)
    #: rq job timeout: a job still unfinished after this long is failed.
    job_timeout: int = Field(default=600, ge=1)
    #: Longest one engine call may run: past it the worker exits non-zero (its jobs are retried
    #: elsewhere), since a hung call cannot be interrupted.  Far above any real batch.
    engine_timeout: float = Field(default=300.0, gt=0)
    #: Started-registry / execution TTL; refreshed every third of it while a job is in flight.
    heartbeat_ttl: int = Field(default=15, ge=3)
    #: How often this worker runs started-registry and intermediate-list cleanup.
    cleanup_interval: float = Field(default=5.0, gt=0)
    #: A job taken (LMOVE) but not started after this long is put back on its queue.
    stranded_after: float = Field(default=10.0, gt=0)
    #: Seconds results (and finished jobs) are kept, unless a job sets its own result_ttl.
    result_ttl: int = 500
    metrics_port: int | None = None
    #: Tokenize on all cores (`tokenizers`' thread pool) or on the worker's own thread.  None:
    #: the pool when the engine runs on a GPU and the machine has 4+ cores; else one thread,
    #: since a CPU engine (or Redis, on a small box) needs the other cores and the pool's
    #: spinning threads cost ~1.6x the CPU of tokenizing on one thread (BENCHMARKS.md).
    parallel_tokenize: bool | None = None
    burst: bool = False

    def tokenize_in_parallel(self) -> bool:
        """`parallel_tokenize`, or its default for this worker."""
        if self.parallel_tokenize is not None:
            return self.parallel_tokenize
        return self.device.startswith("cuda") and self.backend != "null" and (os.cpu_count() or 1) >= 4

    @field_validator("lanes", mode="before")
    @classmethod
    def _lanes(cls, v: object) -> tuple[str, ...]:
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        chosen = {str(x).strip() for x in items if str(x).strip()}
        unknown = sorted(chosen - set(LANES))
        if unknown:
            raise ValueError(f"unknown lane(s) {', '.join(unknown)}; known: {', '.join(LANES)}")
        if not chosen:
            raise ValueError("at least one lane")
        return tuple(lane for lane in LANES if lane in chosen)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        device = v.strip().lower()
        if device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
            return device
        raise ValueError(f"{v!r} is not cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _one_source(self) -> WorkerSettings:
        if self.bundle is not None and self.model is not None:
            raise ValueError("pass --bundle or --model, not both")
        return self

    @property
    def model_path(self) -> Path | None:
        """The bundle or model dir to load (None: the default model)."""
        return self.bundle or self.model

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0
