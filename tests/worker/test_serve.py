"""`vecq serve` as a user runs it: real processes (embedded Valkey, a CPU worker, the gateway), an
HTTP request whose vectors match the engine's, and Ctrl-C as a terminal sends it (SIGINT to the
whole process group) stopping all of it within 3 s in one line, leaving no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from vecq.engines import Embedder
from vecq.producer.gateway import GatewaySettings
from vecq.worker.stack import gateway_env

from .servers import VECQ, free_port

KEY = "serve-test-key"


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (read from /proc: no psutil here)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _role(pid: int) -> str:
    """`valkey-server` (which rewrites its argv[0] to "PATH HOST:PORT"), or the vecq verb a
    child runs (`python -m vecq.worker VERB ...`)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[3] if argv[1:3] == ["-m", "vecq.worker"] else Path(argv[0].split()[0]).name


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"vecq serve exited ({proc.wait()}): {''.join(lines)[-3000:]}")
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"vecq serve not ready in {timeout:.0f}s: {''.join(lines)[-3000:]}")


def test_serve_answers_http_and_ctrl_c_stops_everything_in_3s(tiny_bert_dir: Path) -> None:
    port = free_port()
    args = [*VECQ, "serve", "--model", str(tiny_bert_dir), "--backend", "torch", "--gpus", "none"]
    proc = subprocess.Popen(
        [*args, "--port", str(port), "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )
    try:
        (ready,) = [ln for ln in _read_until(proc, "Ctrl-C stops", 180) if "vecq serve:" in ln]
        assert f"http://127.0.0.1:{port}/v1 serves tiny-chinese-bert (1 CPU worker, embedded Valkey)" in ready
        kids = _children(proc.pid)
        assert sorted(map(_role, kids)) == ["gateway", "valkey-server", "worker"]

        texts = ["今天天气怎么样", "我们去公园散步吧", "hello world"]
        body = {"model": "tiny-chinese-bert", "input": texts}
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        assert httpx.post(url, json=body, timeout=30).status_code == 401  # the gateway's keys hold
        reply = httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert reply.status_code == 200, reply.text
        got = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
        want = Embedder.load(tiny_bert_dir, backend="torch").embed(texts)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert got.shape == want.shape and cos.min() > 0.9999, cos

        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert took <= 3.0, f"stopping took {took:.2f}s"
    assert proc.returncode == 0
    assert rest.splitlines() == ["vecq serve: stopped"], rest
    assert [pid for pid in kids if _alive(pid)] == []  # the Valkey, the worker and the gateway


def test_a_taken_port_is_one_line_before_anything_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [*VECQ, "serve", "--backend", "null", "--port", str(port)]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"vecq: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"
    ]


def test_gateway_settings_reach_the_gateway_child_as_they_were_given(tmp_path: Path) -> None:
    """The gateway child reads its settings from VECQ_* (so keys stay out of `ps`): the same values back."""
    given = GatewaySettings(
        port=8123,
        api_keys=["k1", "k2"],
        models=["bge-small"],
        tokenizers={"bge-small": tmp_path},
        timeout=7.5,
        max_in_flight=64,
    )
    env = gateway_env(given)
    assert "VECQ_REDIS_URL" not in env  # the gateway's --redis flag, the stack's own Redis
    back = GatewaySettings(**{k[5:].lower(): v for k, v in env.items()})
    assert back == given
