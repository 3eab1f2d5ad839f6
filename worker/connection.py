"""Reaching Redis from a worker at start: wait for it, rather than die before it is up.

Workers are started by supervisors (systemd, Kubernetes) that may start them before Redis, or
while Redis restarts.  A worker that exits then only turns into a restart loop with a
traceback per turn; one that waits says so once, in one line naming the URL with its password
masked, and starts serving as soon as Redis answers.  Wrong credentials or missing ACL
permissions are not waited out: no retry can fix them.
"""

from __future__ import annotations

import logging
import time

import redis

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
