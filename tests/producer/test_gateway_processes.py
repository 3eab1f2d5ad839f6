"""`vecq gateway --processes N`: several processes on one port, each with the same settings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from ..worker.servers import stop_process, until


def _children(pid: int) -> set[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def test_two_processes_share_the_port_and_the_settings(
    redis_url, start_worker, start_gateway, expected
) -> None:
    start_worker(redis_url)
    gateway = start_gateway(redis_url, "--processes", "2", "--api-key", "k1")
    until(lambda: len(_children(gateway.proc.pid)) >= 2, 30, "two gateway processes")
    children = _children(gateway.proc.pid)

    def one(i: int) -> tuple[int, list[float] | None]:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:  # a connection of its own
            headers = {"Authorization": "Bearer k1"}
            answer = http.post("/v1/embeddings", json={"input": f"text {i}"}, headers=headers)
            return answer.status_code, answer.json()["data"][0]["embedding"] if answer.is_success else None

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))
    assert [status for status, _ in answers] == [200] * 40
    got = np.array([vector for _, vector in answers], dtype=np.float32)
    assert np.array_equal(got, expected([f"text {i}" for i in range(40)]))
    # the key travelled to every process: none lets a request in without it
    for _ in range(6):
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            assert http.post("/v1/embeddings", json={"input": "x"}).status_code == 401

    stop_process(gateway.proc)
    until(lambda: not [pid for pid in children if _alive(pid)], 10, "the gateway's processes to exit")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
