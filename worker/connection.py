"""Reaching Redis from a worker at start: wait for it, rather than die before it is up; and
waiting for a reply without giving the core up (`spin_until_readable`).

Workers are started by supervisors (systemd, Kubernetes) that may start them before Redis, or
while Redis restarts.  A worker that exits then only turns into a restart loop with a
traceback per turn; one that waits says so once, in one line naming the URL with its password
masked, and starts serving as soon as Redis answers.  Wrong credentials or missing ACL
permissions are not waited out: no retry can fix them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.commands.core import Script

from vecq.producer.connection import is_transient, mask_url, unavailable

log = logging.getLogger(__name__)


def wait_for_redis(connection: redis.Redis, url: str, *, cap: float = 30.0) -> float:
    """Block until `connection` answers PING; returns the seconds waited.  Refusals raise
    `RedisUnavailable` (one line, password masked) at once."""
    wait, since = 0.25, None
    while True:
        try:
            connection.ping()
        except Exception as exc:
            if not is_transient(exc):  # wrong credentials, missing permissions, not a connection error
                raise unavailable(url, exc) from None
            if since is None:
                since = time.monotonic()
                log.warning(
                    "Redis at %s is not reachable (%s); waiting for it, retrying every %gs at most",
                    mask_url(url),
                    type(exc).__name__,
                    cap,
                )
            time.sleep(wait)
            wait = min(wait * 2, cap)
            continue
        waited = 0.0 if since is None else time.monotonic() - since
        if since is not None:
            log.info("Redis at %s answered after %.1fs", mask_url(url), waited)
        return waited


def spin_until_readable(connection: redis.connection.Connection, seconds: float) -> bool:
    """Poll `connection` until a reply is there or `seconds` pass, without blocking the thread;
    True if one is there.  A thread that blocks gives its core up, and what it runs next runs
    cold: on the H200 host each step of a lone query's path cost two to six times its
    back-to-back time after a wait (BENCHMARKS.md, issue 14).  A short spin after each job keeps
    the worker's core, and its caches, for the next one; the price is that core while it spins."""
    if seconds <= 0:
        return False
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if connection.can_read(timeout=0):
            return True
    return False


def run_script_spinning(
    connection: redis.Redis, script: Script, args: list[object], spin_s: float
) -> Any:  # fmt: skip
    """`script(keys=[], args=args)`, its reply polled for up to `spin_s` before the thread blocks."""
    pool = connection.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("EVALSHA", script.sha, 0, *args)
        spin_until_readable(conn, spin_s)
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:  # the server lost its scripts (a restart): load, send again
            script.sha = connection.script_load(script.script)
            conn.send_command("EVALSHA", script.sha, 0, *args)
            return conn.read_response()
    except BaseException:
        conn.disconnect()  # a reply may still be on its way: never reuse it
        raise
    finally:
        pool.release(conn)
