"""What operators read: `--metrics-port` over HTTP, `vecq status` and `vecq health` (real Redis)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from vecq.worker.cli import main

from .conftest import BULK, INTERACTIVE, enqueue, run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_port_serves_what_the_jobs_did(redis_conn, make_worker, serving, null_embedder) -> None:
    texts = [[f"metric text {j} {i}" for i in range(3)] for j in range(5)]
    enqueue(redis_conn, texts)
    enqueue(redis_conn, [[7]])  # refused at intake: bad_request
    port = _free_port()
    worker = make_worker(burst=False, metrics_port=port, max_wait_ms=100)
    serving(worker)
    _until(lambda: worker.finished_jobs == 5 and worker.failed_jobs == 1, 20, "6 jobs to end")

    m = _scrape(port)
    batches = sum(v for (name, _), v in m.items() if name == "vecq_batches_total")
    assert batches == 1  # 15 same-bucket texts, all taken at once: one partial batch
    assert m[("vecq_texts_total", ())] == 15
    assert m[("vecq_jobs_total", (("status", "finished"),))] == 5
    assert m[("vecq_jobs_total", (("status", "failed"),))] == 1
    assert m[("vecq_job_failures_total", (("reason", "bad_request"),))] == 1
    assert m[("vecq_queue_wait_seconds_count", ())] == 5
    assert 0 < m[("vecq_queue_wait_seconds_sum", ())] < 20
    assert m[("vecq_engine_seconds_count", ())] == 1 and m[("vecq_engine_seconds_sum", ())] > 0

    shape = worker.embedder.shapes.fit(15, 16)
    lengths = null_embedder.tokenizer.encode([t for job in texts for t in job]).lengths
    assert m[("vecq_batch_fill_ratio_count", ())] == 1
    assert m[("vecq_batch_fill_ratio_sum", ())] == pytest.approx(15 / shape.batch)
    assert m[("vecq_padding_ratio_count", ())] == 1
    assert m[("vecq_padding_ratio_sum", ())] == pytest.approx(1 - lengths.sum() / shape.tokens)
    assert m[("vecq_pending_texts", ())] == 0


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_status_shows_queues_workers_and_counts(redis_conn, redis_url, make_worker, serving) -> None:
    enqueue(redis_conn, [["a"], ["b"], ["c"]])
    enqueue(redis_conn, [[1]])
    enqueue(redis_conn, [["d"], ["e"]], queue=BULK, lane="bulk")
    worker = serving(make_worker(burst=False))
    _until(lambda: worker.finished_jobs == 5 and worker.failed_jobs == 1, 20, "6 jobs to end")

    code, out = _cli("status", "--redis", redis_url, "--sample", "0")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"redis: {redis_url}"
    assert [ln.split() for ln in lines if ln.startswith("vecq.")] == [
        [BULK, "0", "0", "0", "2", "0"],
        [INTERACTIVE, "0", "0", "0", "3", "1"],
    ]
    assert "in flight: 0 job(s)" in lines and "workers: 1" in lines
    assert f"  {worker.name}  idle  5 finished, 1 failed  (healthy)" in lines

    worker.stop()
    _until(lambda: not redis_conn.exists(f"vecq:health:{worker.name}"), 20, "the worker to stop")
    enqueue(redis_conn, [["f"], ["g"]])
    code, out = _cli("status", "--redis", redis_url, "--sample", "0")
    assert code == 0, out
    assert [INTERACTIVE, "2", "0", "0", "3", "1"] in [ln.split() for ln in out.splitlines()]
    assert "workers: 0" in out.splitlines()


@pytest.fixture
def redis_with_password(tmp_path) -> Iterator[int]:
    """A private redis-server that requires a password (`secret`)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH")
    port = _free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--requirepass", "secret", "--dir", str(tmp_path)]
    proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    try:
        _until(lambda: _pings(port), 10, "redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, password="secret").ping())
    except redis.ConnectionError:
        return False


def test_status_and_health_mask_the_password(redis_with_password) -> None:
    url = f"redis://:secret@127.0.0.1:{redis_with_password}/0"
    masked = f"redis://:***@127.0.0.1:{redis_with_password}/0"
    code, out = _cli("status", "--redis", url, "--sample", "0")
    assert code == 0, out
    assert out.splitlines()[0] == f"redis: {masked}" and "secret" not in out
    assert "(no vecq queues)" in out

    wrong = f"redis://:wrong-secret@127.0.0.1:{redis_with_password}/0"
    code, out = _cli("status", "--redis", wrong, "--sample", "0")
    assert code == 2 and "wrong-secret" not in out
    assert f"redis://:***@127.0.0.1:{redis_with_password}/0" in out
    code, out = _cli("health", "--redis", wrong)
    assert code == 1 and "wrong-secret" not in out


def test_health_exit_codes(redis_url, make_worker, serving, monkeypatch) -> None:
    assert _cli("health", "--redis", redis_url) == (1, "vecq: no healthy worker\n")
    worker = serving(make_worker(burst=False))
    assert _cli("health", "--redis", redis_url) == (0, "vecq: 1 healthy worker(s)\n")
    assert _cli("health", "--redis", redis_url, "--worker-name", worker.name)[0] == 0
    assert _cli("health", "--redis", redis_url, "--worker-name", "nobody") == (
        1,
        "worker nobody: no live health key\n",
    )
    assert _cli("health", "--redis", redis_url, "--name", "all-minilm-l6-v2")[0] == 0
    assert _cli("health", "--redis", redis_url, "--name", "other-model")[0] == 1
    # --this-host: a container's probe sees its own workers only (a pod's hostname is its own).
    here = socket.gethostname()
    assert _cli("health", "--redis", redis_url, "--this-host") == (0, f"host {here}: 1 healthy worker(s)\n")
    monkeypatch.setattr(socket, "gethostname", lambda: "another-pod")
    assert _cli("health", "--redis", redis_url, "--this-host") == (1, "host another-pod: no healthy worker\n")
    monkeypatch.undo()
    worker.stop()
    _until(lambda: _cli("health", "--redis", redis_url)[0] == 1, 20, "health to fail once stopped")


def test_burst_run_leaves_health_unset(redis_url, redis_conn, make_worker) -> None:
    enqueue(redis_conn, [["x"]])
    run(make_worker())
    assert _cli("health", "--redis", redis_url)[0] == 1


def test_metrics_host_chooses_the_listening_address(make_worker, serving) -> None:
    """Issue 15 item 7: the metrics port always listened on every interface."""
    port = _free_port()
    worker = make_worker(burst=False, metrics_port=port, metrics_host="127.0.0.1")
    serving(worker)
    _until(lambda: _scrape(port) is not None, 20, "the metrics port up")
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"  # LISTEN
    ]
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1, not 00000000 (every interface)


class _SleepyEngine:
    """The null engine taking `delay` seconds per batch: a known engine rate."""

    def __init__(self, inner, delay: float) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.delay = inner, delay
        self.shapes, self.dim = inner.shapes, inner.dim

    def warmup(self) -> None: ...

    def close(self) -> None: ...

    def run(self, batch):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return self.inner.run(batch)


def _record(conn: redis.Redis, name: str) -> dict:
    import json

    raw = conn.get(f"vecq:health:{name}")
    return json.loads(raw) if raw else {}


def test_health_record_carries_capacity_once_jobs_ran(
    redis_conn, make_worker, serving, null_embedder
) -> None:
    """Issue 15: the gateway sizes its queued-texts limit from this.  Batches of 4 texts taking
    0.1 s of engine time each: about 40 texts/s, and still that after the worker goes idle
    (engine-busy time, not wall time)."""
    from vecq.engines import Embedder

    slow = Embedder(
        spec=null_embedder.spec,
        tokenizer=null_embedder.tokenizer,
        engine=_SleepyEngine(null_embedder.engine, 0.1),
    )
    worker = serving(make_worker(embedder=slow, burst=False, heartbeat_ttl=3, max_wait_ms=1))
    assert _record(redis_conn, worker.name)["capacity_texts_per_s"] is None  # nothing served yet
    for i in range(4):  # one job at a time: every batch holds its 4 texts
        enqueue(redis_conn, [[f"text {i}.{k}" for k in range(4)]])
        _until(lambda i=i: worker.finished_jobs == i + 1, 20, f"job {i} finished")
    _until(lambda: _record(redis_conn, worker.name).get("capacity_texts_per_s"), 10, "capacity in the record")
    first = _record(redis_conn, worker.name)["capacity_texts_per_s"]
    assert 30 <= first <= 40, first  # 4 texts / (0.1 s + the thread's own share)
    time.sleep(2.5)  # idle, past a heartbeat: the record is rewritten with the same rate
    again = _record(redis_conn, worker.name)
    assert again["time"] > time.time() - 2.5 and again["capacity_texts_per_s"] == first
