"""Connecting to Redis: URLs with their password masked, and retries that are safe to repeat.

redis-py retries every command, MULTI/EXEC included, 10 times by default.  Repeating an EXEC
whose reply was lost enqueues a job twice, so vecq opens its connections with redis-py's retries
off and decides itself: reads are repeated with capped, growing waits (`call` / `acall`);
enqueues are repeated only after checking that the first write did not land (see `enqueue.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import RedisUnavailable

T = TypeVar("T")

_AUTH_ERRORS = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.NoPermissionError,
)
_TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = [
            (k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Not urlunsplit: it drops the empty host of `unix:///path`.
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


def _password(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    from_query = dict(parse_qsl(parts.query)).get("password")
    return unquote(parts.password) if parts.password else from_query


def unavailable(url: str, exc: BaseException) -> RedisUnavailable:
    """A one-line `RedisUnavailable` for `exc`, naming the masked URL and never the password."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        what = "permission denied for this ACL user"
    elif isinstance(exc, _AUTH_ERRORS):
        what = "authentication failed (wrong password or ACL user)"
    else:
        what = "cannot connect"
    return RedisUnavailable(f"Redis at {mask_url(url)}: {what} ({type(exc).__name__}: {_scrub(url, exc)})")


def _scrub(url: str, exc: BaseException) -> str:
    """`exc`'s message on one line, with the URL's password (if it appears at all) masked."""
    detail = " ".join(str(exc).split())
    secret = _password(url)
    return detail.replace(secret, "***") if secret else detail


def _bad_url(url: str, exc: ValueError) -> RedisUnavailable:
    return RedisUnavailable(f"Redis URL {mask_url(url)} is not valid: {_scrub(url, exc)}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a Redis call that is safe to repeat."""

    attempts: int = 5
    base: float = 0.05
    cap: float = 2.0

    def delays(self) -> Iterator[float]:
        """Waits between attempts: base, 2*base, 4*base ... capped (rq's reconnect loop does the same)."""
        for i in range(self.attempts - 1):
            yield min(self.cap, self.base * 2**i)


def is_transient(exc: BaseException) -> bool:
    """Connection trouble worth retrying; wrong credentials and permissions never are."""
    return isinstance(exc, _TRANSIENT_ERRORS) and not isinstance(exc, _AUTH_ERRORS)


def is_refused(exc: BaseException) -> bool:
    """Wrong credentials or missing ACL permissions: no retry will help."""
    return isinstance(exc, _AUTH_ERRORS)


def call(policy: RetryPolicy, url: str, fn: Callable[[], T]) -> T:
    """`fn()` retried on transient errors; any Redis connection error ends as `RedisUnavailable`."""
    delays = policy.delays()
    while True:
        try:
            return fn()
        except Exception as exc:
            if not isinstance(exc, (*_TRANSIENT_ERRORS, *_AUTH_ERRORS)):
                raise
            delay = next(delays, None) if is_transient(exc) else None
            if delay is None:
                raise unavailable(url, exc) from None
            time.sleep(delay)


async def acall(policy: RetryPolicy, url: str, fn: Callable[[], Awaitable[T]]) -> T:
    """`call` for coroutines."""
    delays = policy.delays()
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not isinstance(exc, (*_TRANSIENT_ERRORS, *_AUTH_ERRORS)):
                raise
            delay = next(delays, None) if is_transient(exc) else None
            if delay is None:
                raise unavailable(url, exc) from None
            await asyncio.sleep(delay)


#: Read timeout of producer connections.  redis-py 8 defaults to 5 s, shorter than the XREAD
#: BLOCK that waits for results (`results.MAX_BLOCK_MS`), which then fails every job that takes
#: longer than 5 s; this stays above the longest block while still noticing a dead server.
READ_TIMEOUT_S = 20.0


def _options(connect_timeout: float) -> dict[str, object]:
    return {
        "socket_timeout": READ_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
    }


def open_sync(url: str, *, connect_timeout: float = 5.0) -> redis.Redis:
    """A connection pool for `url` (password, ACL user, db, `rediss://`: redis-py's from_url)."""
    try:
        return redis.Redis.from_url(url, **_options(connect_timeout))
    except ValueError as exc:
        raise _bad_url(url, exc) from None


def open_async(url: str, *, connect_timeout: float = 5.0) -> redis.asyncio.Redis:
    """`open_sync` for redis.asyncio."""
    try:
        return redis.asyncio.Redis.from_url(url, **_options(connect_timeout))
    except ValueError as exc:
        raise _bad_url(url, exc) from None


def describe(connection: redis.Redis | redis.asyncio.Redis) -> str:
    """A URL-like name for a connection the caller built, for messages (no password in it)."""
    kw = connection.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
