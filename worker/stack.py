"""`vecq serve`: what an HTTP user needs on one machine, as one supervised process group.

Three parts, started in this order: a Redis (an embedded Valkey, `embed/server.py`, unless a URL
is given), the workers (one per GPU through the `--gpus` supervisor's children, or one on CPU),
and, once every worker has a live health key, the gateway (`vecq gateway`), so that its first
request finds the model served and it can be handed the model's tokenizer for usage counts.
Workers and gateway are children of one `Supervisor`: restarted if they die, killed if vecq is
(`processes.py`), each in a session of its own so that a terminal's Ctrl-C reaches vecq only.

Stopping (Ctrl-C, SIGTERM) runs the start backwards, each stage bounded so the whole takes under
3 s: the gateway first (it stops accepting; requests in flight are answered by the workers, still
up), then the workers (each drains its in-flight batch), then the embedded server, stopped by
vecq, last.  The gateway's settings travel to it as `VECQ_*` variables, not flags, so API keys
never show in `ps`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from redis import RedisError

from vecq.producer.connection import mask_url, open_sync
from vecq.producer.gateway.guard import LIVENESS_PATH

from .metrics import bind_error
from .status import health
from .supervisor import CHILD_COMMAND, Child, Supervisor

if TYPE_CHECKING:
    from redis import Redis

    from vecq.producer.gateway import GatewaySettings

log = logging.getLogger(__name__)

#: The gateway child runs `vecq gateway` the way the workers run `vecq worker`.
GATEWAY_COMMAND = (sys.executable, "-m", "vecq.worker", "gateway")
#: Seconds the gateway may take to stop (requests in flight finish), then the workers (drain).
GATEWAY_STOP_S = 1.0
WORKERS_STOP_S = 1.5
POLL_S = 0.1


class StackError(RuntimeError):
    """`vecq serve` cannot start: the port is taken (one line naming it)."""


@dataclass(frozen=True, kw_only=True)
class ServePlan:
    """What one `vecq serve` runs; the CLI makes it from its flags."""

    gateway: GatewaySettings
    #: None: an embedded Valkey, private to this run.
    redis_url: str | None = None
    #: `vecq worker` flags every worker gets (model, bundle, backend, ...).
    worker_args: tuple[str, ...] = ()
    #: One worker per GPU (and replica); none: one CPU worker.
    gpus: tuple[str, ...] = ()
    workers_per_gpu: int = 1
    #: The model dir or bundle the workers load: its tokenizer gives the gateway usage counts.
    model_path: Path | None = None
    log_level: str = "WARNING"


@dataclass(frozen=True)
class Ready:
    """What the user is told once the endpoint answers."""

    url: str
    model: str
    workers: int
    redis: str


class Stack:
    """Runs one `ServePlan` until a stop signal; `announce` is told once it is ready."""

    def __init__(self, plan: ServePlan, *, announce: Callable[[Ready], None]) -> None:
        self.plan = plan
        self.announce = announce
        self.base_name = f"vecq-serve.{socket.gethostname()}.{os.getpid()}"

    def run(self) -> int:
        """Exit code: 0 after a clean stop, 2 when a worker cannot start at all, else 1."""
        host, port = self.plan.gateway.host, self.plan.gateway.port
        check_port_free(host, port)
        with self._redis() as url:
            supervisor = Supervisor(self._workers(url), stop_timeout=WORKERS_STOP_S)
            with supervisor.signals():
                failed = self._serve(supervisor, url)
                stopped = supervisor.stop()
        return failed if failed is not None else stopped

    def _serve(self, supervisor: Supervisor, url: str) -> int | None:
        """Workers, then the gateway, then serving until a signal; an exit code if one failed."""
        conn = open_sync(url)
        names = [child.argv[child.argv.index("--worker-name") + 1] for child in supervisor.children]
        models: list[str] = []

        def healthy() -> bool:
            models[:] = _models(conn, names)
            return bool(models)

        try:
            supervisor.start()
            failed = _tend_until(supervisor, healthy)
        finally:
            conn.close()
        if failed is not None or supervisor.stopping:
            return failed
        supervisor.children.append(self._gateway(url, models[0], slot=len(names)))
        supervisor.start()
        failed = _tend_until(supervisor, lambda: _answers(self._local_url(LIVENESS_PATH)))
        if failed is not None or supervisor.stopping:
            return failed
        redis = "embedded Valkey" if self.plan.redis_url is None else mask_url(url)
        self.announce(Ready(self._local_url("/v1"), models[0], len(names), redis))
        return _tend_until(supervisor, lambda: False)

    @contextlib.contextmanager
    def _redis(self) -> Iterator[str]:
        if self.plan.redis_url is not None:
            yield self.plan.redis_url
            return
        from .embed.server import embedded_redis

        with embedded_redis() as url:
            yield url

    def _workers(self, url: str) -> list[Child]:
        args = ["--redis", url, "--log-level", self.plan.log_level, *self.plan.worker_args]
        if self.plan.gpus:
            children = Supervisor.for_gpus(
                self.plan.gpus, args, workers_per_gpu=self.plan.workers_per_gpu, worker_name=self.base_name
            ).children
        else:
            argv = [*CHILD_COMMAND, *args, "--worker-name", f"{self.base_name}.cpu"]
            children = [Child(slot=0, gpu="cpu", argv=argv, env=dict(os.environ), label="cpu worker")]
        for child in children:
            child.stop_timeout = WORKERS_STOP_S
        return children

    def _gateway(self, url: str, model: str, *, slot: int) -> Child:
        settings = self.plan.gateway
        path = self.plan.model_path
        if path is not None and (Path(path) / "tokenizer.json").is_file():
            settings = settings.model_copy(update={"tokenizers": {**settings.tokenizers, model: Path(path)}})
        argv = [*GATEWAY_COMMAND, "--redis", url, "--log-level", self.plan.log_level]
        env = {**os.environ, **gateway_env(settings)}
        return Child(
            slot=slot, gpu="", argv=argv, env=env, label="gateway", stage=0, stop_timeout=GATEWAY_STOP_S
        )

    def _local_url(self, path: str) -> str:
        host = self.plan.gateway.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.plan.gateway.port}{path}"


def gateway_env(settings: GatewaySettings) -> dict[str, str]:
    """`settings` as `VECQ_*` variables (`GatewaySettings.to_env`); the Redis URL is the
    gateway's `--redis` flag instead."""
    env = settings.to_env()
    env.pop("VECQ_REDIS_URL", None)
    return env


def check_port_free(host: str, port: int) -> None:
    """Refuse a taken port in one line before anything starts (uvicorn would log a traceback)."""
    exc = bind_error(host, port)
    if exc is not None:
        raise StackError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})")


def _tend_until(supervisor: Supervisor, done: Callable[[], bool]) -> int | None:
    """Tend the children until `done()` or a stop signal; an exit code if a child can never start."""
    while not supervisor.stopping:
        failed = supervisor.tend()
        if failed is not None:
            return failed
        if done():
            return None
        time.sleep(POLL_S)
    return None


def _models(conn: Redis, names: list[str]) -> list[str]:
    """The model the named workers serve, once every one of them has a live health key."""
    try:
        records = health(conn)
    except RedisError:  # a Redis given by URL, not up yet: the workers wait for it too
        return []
    if not all(name in records for name in names):
        return []
    return [records[names[0]]["model"]]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False
