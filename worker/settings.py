"""`WorkerSettings`: every knob of a vecq worker, from `VECQ_*` env vars or CLI flags (1:1).

One typed object so that the CLI, embedded mode and tests build workers the same way; the
defaults are the ones a GPU worker on a shared Redis should run with.  `vecq worker`'s options
are made from these fields (`cli/options.py`): a field's description is its `--help` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from vecq.engines import Embedder, backends
from vecq.engines.backends.onnx import physical_cores
from vecq.engines.bundle import MANIFEST
from vecq.engines.reranker import Reranker, is_cross_encoder
from vecq.producer.keys import LANES
from vecq.producer.settings import CommonSettings


def tokenize_threads_for(cpus: int, *, workers: int) -> int:
    """Threads per tokenizer process when `workers` GPU workers share `cpus` (two processes
    each): three quarters of the CPUs tokenize, the rest run the engine threads, Redis and the
    producers.  On the H200's 16-core host the tokenizer costs ~120 us of CPU per 53-token text
    and one worker with 2 x 4 threads supplied only 33k texts/s to a 47k texts/s engine
    (BENCHMARKS.md, issue 14)."""
    return max(min(2, cpus), (cpus * 3 // 4) // (2 * max(1, workers)))


class WorkerSettings(CommonSettings):
    """What one `vecq worker` process serves and how it batches."""

    model_config = SettingsConfigDict(env_prefix="VECQ_", extra="forbid", frozen=True)

    bundle: Path | None = Field(default=None, description="Bundle dir (`vecq build` output).")
    model: Path | None = Field(default=None, description="Model dir (default: all-MiniLM-L6-v2).")
    backend: str | None = Field(
        default=None,
        description="Engine backend (default: the bundle's own; torch for a model dir).",
        json_schema_extra={"choices": list(backends.names())},
    )
    device: str = Field(default="cpu", description="cpu, cuda or cuda:N.")
    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = Field(
        default=None,
        description="For a model dir: int8 (onnx on CPU: ~1.7x fp32 with VNNI, cosine >= 0.99) or "
        "fp16/bf16 (CUDA). A bundle has its own.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="Engine threads on CPU (default: the physical cores this process may use).",
    )
    lanes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=LANES, description="Lanes served, e.g. interactive,bulk (interactive always first)."
    )
    name: str | None = Field(
        default=None, description="Model name the queues are derived from (default: the model's own)."
    )
    worker_name: str | None = Field(
        default=None, description="rq worker name (default: vecq.<host>.<pid>.<random>)."
    )
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="Longest the oldest text of a partial batch waits for batch-mates."
    )
    max_batch_tokens: int = Field(
        default=16384,
        ge=512,
        description="Most real tokens per batch of an engine that packs (the padding-free torch "
        "engine): smaller batches cut an interactive text's wait behind bulk ones.",
    )
    prefetch_texts: int = Field(
        default=4096,
        ge=1,
        description="Texts taken but not yet written back, at most (and at most 2 s of engine work).",
    )
    engine_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one engine call may run before the worker exits (its jobs are retried "
        "elsewhere: a hung call cannot be interrupted).",
    )
    heartbeat_ttl: int = Field(
        default=15,
        ge=3,
        description="Seconds an execution lives without a heartbeat (refreshed every third).",
    )
    cleanup_interval: float = Field(default=5.0, gt=0, description="Seconds between recovery passes.")
    stranded_after: float = Field(
        default=10.0, gt=0, description="Seconds a job may sit in an intermediate list before it is put back."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port."
    )
    metrics_host: str = Field(
        default="0.0.0.0",
        description="Address the metrics port listens on (0.0.0.0: every interface, for a scraper "
        "in another pod; 127.0.0.1: this host only).",
    )
    #: None: the pool unless a CPU engine needs the cores (device cpu, a real backend): there the
    #: tokenizer's share is tiny beside the engine, and texts are tokenized one call each on the
    #: worker's tokenizing thread.  The null engine and GPU engines want the pool: one call per
    #: take keeps the GIL off the main thread, and the cores are free (BENCHMARKS.md, queue bench).
    parallel_tokenize: bool | None = Field(
        default=None,
        description="Tokenize on all cores or on one (default: one only beside a CPU engine).",
        json_schema_extra={"flag": "--parallel-tokenize/--serial-tokenize"},
    )
    tokenize_processes: int | None = Field(
        default=None,
        ge=0,
        description="Tokenizer processes beside the worker (default: on a GPU 2, or 1 with fewer "
        "than 8 CPUs; on CPU none: a thread).",
    )
    tokenize_threads: int | None = Field(
        default=None,
        ge=1,
        description="Tokenizing threads in each tokenizer process (default: 3/8 of the CPUs this "
        "process may use; `--gpus` divides them among its workers).",
    )
    #: CPython's default is 5 ms.  The engine thread waits for the device with the GIL released
    #: and must take it back for every batch; behind a few threads running Python (main loop,
    #: finishing, tokenizer I/O) it waited up to an interval each: an emulated 6 ms device stayed
    #: busy 36 % of the time at 5 ms, 91 % at 0.5 ms (benchmarks/probes/gil_handoff.py).
    gil_switch_ms: float = Field(
        default=0.5,
        gt=0,
        description="GIL switch interval of the worker process (how soon a thread that waits for "
        "the GIL gets it from one running Python).",
    )
    burst: bool = Field(default=False, description="Exit when the queues are empty.")

    def engine_backend(self) -> str | None:
        """The backend to load: the one asked for; else a bundle's own (None); else, for a model
        dir or the default model, onnx on CPU (a bundle built once into the cache: 1.3x torch,
        BENCHMARKS.md) and torch with CUDA graphs on a GPU."""
        if self.backend is not None:
            return self.backend
        if self.model_path is not None and (Path(self.model_path) / MANIFEST).is_file():
            return None
        return "onnx" if self.device == "cpu" else "torch"

    def engine_options(self) -> dict[str, object]:
        """`Embedder.load` options these settings ask for (refused, in one line, by a bundle)."""
        if self.precision is not None and self.engine_backend() is None:
            raise ValueError("--precision applies to a model dir or the default model; a bundle has its own")
        options: dict[str, object] = {}
        if self.precision is not None:
            options["precision"] = self.precision
        if self.device == "cpu":
            options["threads"] = self.threads or physical_cores()
        return options

    def load_embedder(self) -> Embedder | Reranker:
        """The model (or the null engine) these settings name, on their backend and device; a
        cross-encoder model dir (`--model`, a `*ForSequenceClassification`) or a reranker's
        bundle is served as a `Reranker`: torch or onnx on the CPU, torch fp16 (or `precision`)
        on CUDA."""
        if self.model_path is not None and is_cross_encoder(self.model_path):
            return self._load_reranker(self.model_path)
        return Embedder.load(
            self.model_path, backend=self.engine_backend(), device=self.device, **self.engine_options()
        )

    def _load_reranker(self, path: Path) -> Reranker:
        threads = self.threads or physical_cores()
        return Reranker.load(
            path, backend=self.engine_backend(), device=self.device, threads=threads, precision=self.precision
        )

    def tokenize_in_parallel(self) -> bool:
        """`parallel_tokenize`, or its default for this worker."""
        if self.parallel_tokenize is not None:
            return self.parallel_tokenize
        return self.device.startswith("cuda") or self.backend == "null"

    def tokenizer_processes(self) -> int:
        """`tokenize_processes`, or its default: on a GPU the host must keep up with the engine
        (tokenizing is ~110 us of CPU per 53-token text on the H200's host, BENCHMARKS.md), on
        CPU the engine needs the cores more than the tokenizer does."""
        if self.tokenize_processes is not None:
            return self.tokenize_processes
        if not self.device.startswith("cuda"):
            return 0
        return 2 if len(os.sched_getaffinity(0)) >= 8 else 1

    def tokenizer_threads(self) -> int:
        """`tokenize_threads`, or its default for one worker alone on its CPUs."""
        if self.tokenize_threads is not None:
            return self.tokenize_threads
        return tokenize_threads_for(len(os.sched_getaffinity(0)), workers=1)

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

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v is not None:
            backends.get(v)  # an unknown name: one line listing the known ones
        return v

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
