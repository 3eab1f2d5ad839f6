"""Prometheus metrics of one worker, named like text-embeddings-inference's.

Each worker owns its `CollectorRegistry` (never the global one), so tests and embedded mode can
build many workers in one process.  Counters are bumped once per batch or per write, not per
text, so metrics cost nothing measurable on the hot path.
"""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .errors import PortBusy

_RATIO = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """The metric families of a vecq worker, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.batch_fill_ratio = Histogram(
            "vecq_batch_fill_ratio",
            "Real rows / rows of the shape, per engine call",
            buckets=_RATIO,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "vecq_padding_ratio",
            "Padding tokens / all tokens of the shape, per engine call",
            buckets=_RATIO,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "vecq_queue_wait_seconds", "Enqueue to start, per job", buckets=_SECONDS, registry=r
        )
        self.engine_seconds = Histogram(
            "vecq_engine_seconds", "Engine time per batch (padding included)", buckets=_SECONDS, registry=r
        )
        self.texts_total = Counter("vecq_texts", "Texts embedded (rate() gives texts/s)", registry=r)
        self.batches_total = Counter("vecq_batches", "Engine calls", ["shape"], registry=r)
        self.jobs_total = Counter("vecq_jobs", "Jobs ended, by status", ["status"], registry=r)
        self.job_failures_total = Counter(
            "vecq_job_failures", "Job failures (and retries), by reason", ["reason"], registry=r
        )
        self.pending_texts = Gauge("vecq_pending_texts", "Texts taken but not yet written back", registry=r)

    def batch(
        self, *, shape_rows: int, rows: int, shape_tokens: int, real_tokens: int, seconds: float, shape: str
    ) -> None:
        self.batch_fill_ratio.observe(rows / shape_rows)
        self.padding_ratio.observe(1.0 - real_tokens / shape_tokens if shape_tokens else 0.0)
        self.engine_seconds.observe(seconds)
        self.texts_total.inc(rows)
        self.batches_total.labels(shape).inc()

    def queue_waits(self, seconds: list[float]) -> None:
        """Observe the queue wait of every job of a take."""
        observe = self.queue_wait_seconds.observe
        for value in seconds:
            observe(value)

    def jobs(self, status: str, n: int = 1) -> None:
        if n:
            self.jobs_total.labels(status).inc(n)

    def failure(self, reason: str) -> None:
        self.job_failures_total.labels(reason).inc()

    def serve(self, port: int, addr: str) -> None:
        """Expose `/metrics` on `port` (a daemon thread of prometheus_client)."""
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:  # taken since `check_port`: still one line
            raise PortBusy(_busy(port, addr, exc)) from None


def check_port(port: int, addr: str) -> None:
    """Refuse a metrics port another process listens on before the worker loads its model: the
    server itself starts after warm-up and registration, where a busy port was a traceback."""
    exc = bind_error(addr, port)
    if exc is not None:
        raise PortBusy(_busy(port, addr, exc))


def bind_error(addr: str, port: int) -> OSError | None:
    """Why `addr:port` cannot be listened on now, or None.  Bound as prometheus_client and
    uvicorn bind (SO_REUSEADDR), so the answer agrees with theirs."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, port))
        except OSError as exc:
            return exc
    return None


def _busy(port: int, addr: str, exc: OSError) -> str:
    return f"--metrics-port {port}: cannot listen on {addr}:{port} ({exc.strerror or exc})"
