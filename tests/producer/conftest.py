"""Producer fixtures: a null-engine rq worker to drain queues, clients, a password-protected Redis,
`vecq gateway` and `vecq worker` processes (stopped by pid)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, SimpleWorker

from vecq.producer import Client, MsgpackSerializer, ProducerSettings
from vecq.producer.contract import DEFAULT_MODEL
from vecq.producer.keys import queue_names

from ..worker.servers import VECQ, spawn_worker, stop_process, until

Drain = Callable[..., None]


@pytest.fixture(autouse=True)
def null_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs run by `vecq.worker.tasks.embed` use the deterministic null engine."""
    monkeypatch.setenv("VECQ_BACKEND", "null")
    monkeypatch.delenv("VECQ_BUNDLE", raising=False)
    monkeypatch.delenv("VECQ_MODEL", raising=False)
    monkeypatch.delenv("VECQ_MAX_QUEUED_TEXTS", raising=False)
    from vecq.worker import tasks

    if isinstance(getattr(tasks, "_loaded", None), dict):  # its per-process model cache
        monkeypatch.setattr(tasks, "_loaded", {})


@pytest.fixture(scope="session")
def null_embedder():  # type: ignore[no-untyped-def]
    from vecq.engines import Embedder

    return Embedder.load(backend="null")


@pytest.fixture
def expected(null_embedder) -> Callable[[list[str]], np.ndarray]:  # type: ignore[no-untyped-def]
    """The vectors a job of these texts must come back with."""
    return lambda texts: null_embedder.embed(texts)


@pytest.fixture
def drain(redis_url: str) -> Iterator[Drain]:
    """Run a stock rq SimpleWorker in burst mode over a model's queues (main thread only)."""
    conn = redis.Redis.from_url(redis_url)

    def run(
        model: str = DEFAULT_MODEL,
        lanes: tuple[str, ...] = ("interactive", "bulk"),
        before_job: Callable[[], None] | None = None,
    ) -> None:
        names = queue_names(model, lanes)
        queues = [Queue(name, connection=conn, serializer=MsgpackSerializer) for name in names]
        worker_class = SimpleWorker if before_job is None else _probing_worker(before_job)
        worker_class(queues, connection=conn, serializer=MsgpackSerializer).work(burst=True)

    yield run
    conn.close()


def _probing_worker(before_job: Callable[[], None]) -> type[SimpleWorker]:
    """A SimpleWorker that calls `before_job()` before running each job (to observe Redis)."""

    class ProbingWorker(SimpleWorker):
        def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
            before_job()
            return super().execute_job(job, queue)

    return ProbingWorker


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url) as c:
        yield c


def fast_settings(**overrides: object) -> ProducerSettings:
    """Settings whose connection retries give up quickly (tests of unreachable servers)."""
    values: dict[str, object] = {"connect_attempts": 2, "retry_backoff_cap": 0.05}
    values.update(overrides)
    return ProducerSettings(**values)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SpawnedRedis:
    port: int
    password: str
    proc: subprocess.Popen[bytes]

    def url(self, password: str | None = None, db: int = 0, user: str = "") -> str:
        return f"redis://{user}:{self.password if password is None else password}@127.0.0.1:{self.port}/{db}"


def start_redis(port: int, password: str) -> subprocess.Popen[bytes]:
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
    args += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = redis.Redis(port=port, password=password)
    for _ in range(200):
        try:
            if conn.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def secret_redis() -> Iterator[SpawnedRedis]:
    """A throwaway `redis-server --requirepass secret` on a free port, stopped by its pid."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    server = SpawnedRedis(port=port, password="secret", proc=start_redis(port, "secret"))
    yield server
    stop_redis(server.proc)


# --- gateway and worker processes ----------------------------------------------------------------
@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]

    def openai(self) -> openai.OpenAI:
        """The official client, without its own retries (the tests look at single answers)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)

    def models(self) -> list[str]:
        """The ids `GET /v1/models` lists: what the gateway takes requests for now."""
        return [m["id"] for m in httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def _listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"vecq gateway exited ({proc.returncode}): {log.read_text()[-2000:]}")
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`vecq gateway --redis URL FLAGS...` on a free port, up once it accepts connections."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(redis_url: str, *flags: str) -> Gateway:
        port = free_port()
        log = tmp_path / f"gateway-{port}.log"
        cmd = [*VECQ, "gateway", "--redis", redis_url, "--port", str(port), "--log-level", "warning", *flags]
        proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        procs.append(proc)
        until(lambda: _listening(port, proc, log), 30, f"vecq gateway on port {port}")
        return Gateway(url=f"http://127.0.0.1:{port}", proc=proc)

    yield start
    for proc in procs:
        stop_process(proc)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """`vecq worker --backend null --redis URL FLAGS...` (later flags win, e.g. `--backend onnx`)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(redis_url: str, *flags: str) -> None:
        procs.append(spawn_worker(redis_url, tmp_path / f"worker-{len(procs)}.log", *flags))

    yield start
    for proc in procs:
        stop_process(proc)
