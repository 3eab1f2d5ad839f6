"""Fault-test plumbing: redis-server and `vecq worker` processes of the test's own, stopped by pid.

Every wait is bounded: `until` fails the test at its deadline instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

VECQ = [sys.executable, "-c", "from vecq.worker.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(predicate: Callable[[], object], timeout: float, what: str, *, step: float = 0.05) -> float:
    """Seconds until `predicate()` is truthy; fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@dataclass
class RedisServer:
    """A `redis-server` on a free loopback port, in its own directory (AOF files live there)."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    password: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 15.0) -> RedisServer:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH")
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        cmd += ["--save", "", "--logfile", str(self.workdir / "server.log"), *self.args]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(self.pings, timeout, f"redis-server on port {self.port}")
        return self

    def pings(self) -> bool:
        try:
            return bool(self.admin().ping())
        except (redis.ConnectionError, redis.ResponseError):
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.workdir / "server.log").read_text()[-2000:]
                pytest.fail(f"redis-server exited ({self.proc.returncode}): {log}")
            return False

    def admin(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, db=db, socket_timeout=5)

    def url(self, db: int = 0, *, user: str = "", password: str | None = None) -> str:
        secret = self.password if password is None else password
        auth = f"{user}:{secret}@" if secret else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop by pid (SIGTERM: a clean shutdown; SIGKILL: a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def spawn_worker(
    url: str, log: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`vecq worker --backend null` in its own process (fast heartbeats, so recovery is quick)."""
    cmd = [*VECQ, "worker", "--backend", "null", "--redis", url, "--heartbeat-ttl", "3"]
    cmd += ["--cleanup-interval", "1", *flags]
    out = log.open("ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    SPAWNED.append(proc)
    return proc


# Every worker `spawn_worker` started; the `reap_workers` fixture (conftest.py) kills those still
# running when their test ends.  A worker leaked by a failed test otherwise goes on serving the
# shared test Redis and takes the next tests' jobs, turning one failure into many.
SPAWNED: list[subprocess.Popen[bytes]] = []


def reap_spawned() -> list[int]:
    """SIGKILL every spawned worker still running; their pids."""
    leaked = [p for p in SPAWNED if p.poll() is None]
    for proc in leaked:
        proc.kill()
        proc.wait(10)
    SPAWNED.clear()
    return [p.pid for p in leaked]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM by pid, then SIGKILL after `timeout`; the exit code (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        return None


@dataclass
class SentinelServer(RedisServer):
    """A `redis-server --sentinel` watching `primary` as `service` (quorum 1), with short timeouts
    so that a failover takes seconds.  `password` is the sentinel's own (`requirepass`)."""

    primary: RedisServer | None = None
    service: str = "vecq"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 2000

    def start(self, *, timeout: float = 15.0) -> SentinelServer:
        assert self.primary is not None, "SentinelServer needs the primary it watches"
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH")
        s = self.service
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"logfile {self.workdir / 'server.log'}",
            f"sentinel monitor {s} 127.0.0.1 {self.primary.port} 1",
            f"sentinel down-after-milliseconds {s} {self.down_after_ms}",
            f"sentinel failover-timeout {s} {self.failover_timeout_ms}",
        ]
        if self.primary.password:
            lines.append(f"sentinel auth-pass {s} {self.primary.password}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf = self.workdir / "sentinel.conf"  # the sentinel rewrites it: one per sentinel
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(self.pings, timeout, f"redis sentinel on port {self.port}")
        return self

    def primary_port(self) -> int:
        """The port of the primary this sentinel names now."""
        _host, port = self.admin().sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def sentinel_url(self, db: int = 0) -> str:
        """`redis+sentinel://` URL of the service: the data password in the userinfo, the
        sentinel's in `sentinel_password`."""
        data = self.primary.password if self.primary else None
        auth = f":{data}@" if data else ""
        query = f"?sentinel_password={self.password}" if self.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.port}/{self.service}/{db}{query}"
