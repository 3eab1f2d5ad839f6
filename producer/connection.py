"""Connecting to Redis: URLs with their password masked, and retries that are safe to repeat.

A URL names one server (`redis://`, `rediss://`, `unix://`: redis-py's `from_url`) or a Sentinel
service (`redis+sentinel://[user:password@]host:26379[,host:port...]/service_name[/db]`, with
`rediss+sentinel://` for TLS): then the pool asks the sentinels for the current primary on
every new connection, so a failover is one more lost connection to retry.

redis-py retries every command, writes included, 10 times by default.  Repeating an enqueue
whose reply was lost enqueues a job twice, so vecq opens its connections with redis-py's retries
off and decides itself: reads are repeated with capped, growing waits (`call` / `acall`);
enqueues are repeated only after checking that the first write did not land (see `enqueue.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
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
#: The connection lost its server or its primary: a dead socket, a timeout, or a primary that
#: was demoted to a replica (READONLY).  Reconnecting -- through Sentinel: to the new primary -- helps.
CONNECTION_LOST = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)
_TRANSIENT_ERRORS = (*CONNECTION_LOST, OSError)


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
        pairs = [(k, "***" if _secret(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Not urlunsplit: it drops the empty host of `unix:///path`.
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


def _secret(key: str) -> bool:
    """Query keys that hold a password (`password`, `sentinel_password`)."""
    return key.lower().endswith("password")


def _passwords(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [v for k, v in parse_qsl(parts.query) if _secret(k) and v]
    return [unquote(parts.password), *found] if parts.password else found


def unavailable(url: str, exc: BaseException) -> RedisUnavailable:
    """A one-line `RedisUnavailable` for `exc`, naming the masked URL and never the password."""
    if isinstance(exc, redis.exceptions.NoPermissionError):
        what = "permission denied for this ACL user"
    elif isinstance(exc, redis.ReadOnlyError):
        what = "read-only replica (a demoted primary?)"
    elif isinstance(exc, _AUTH_ERRORS):
        what = "authentication failed (wrong password or ACL user)"
    else:
        what = "cannot connect"
    return RedisUnavailable(f"Redis at {mask_url(url)}: {what} ({type(exc).__name__}: {_scrub(url, exc)})")


def _scrub(url: str, exc: BaseException) -> str:
    """`exc`'s message on one line, with the URL's passwords (if they appear at all) masked."""
    detail = " ".join(str(exc).split())
    for secret in _passwords(url):
        detail = detail.replace(secret, "***")
    return detail


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
            time.sleep(_retry_delay(exc, delays, url))


async def acall(policy: RetryPolicy, url: str, fn: Callable[[], Awaitable[T]]) -> T:
    """`call` for coroutines."""
    delays = policy.delays()
    while True:
        try:
            return await fn()
        except Exception as exc:
            await asyncio.sleep(_retry_delay(exc, delays, url))


def _retry_delay(exc: Exception, delays: Iterator[float], url: str) -> float:
    """How long to wait before trying again after `exc` (shared by `call` and `acall`); raises
    what is not a Redis connection error as it is, and `RedisUnavailable` when retries are spent
    or cannot help."""
    if not isinstance(exc, (*_TRANSIENT_ERRORS, *_AUTH_ERRORS)):
        raise exc
    delay = next(delays, None) if is_transient(exc) else None
    if delay is None:
        raise unavailable(url, exc) from None
    return delay


#: Read timeout of producer connections.  redis-py 8 defaults to 5 s, shorter than the XREAD
#: BLOCK that waits for results (`results.MAX_BLOCK_MS`), which then fails every job that takes
#: longer than 5 s; this stays above the longest block while still noticing a dead server.
READ_TIMEOUT_S = 20.0


def _options(connect_timeout: float, retry: object) -> dict[str, object]:
    return {
        "socket_timeout": READ_TIMEOUT_S,
        "retry": retry,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
    }


def open_sync(url: str, *, connect_timeout: float = 5.0) -> redis.Redis:
    """A connection pool for `url` (password, ACL user, db, `rediss://`: redis-py's from_url;
    `redis+sentinel://`: the primary of a Sentinel service, followed across failovers)."""
    try:
        if is_sentinel_url(url):
            target = parse_sentinel_url(url)
            primary: redis.Redis = _primary(redis.sentinel.Sentinel, target, connect_timeout, _no_retry)
            return primary
        return redis.Redis.from_url(url, **_options(connect_timeout, _no_retry()))
    except ValueError as exc:
        raise _bad_url(url, exc) from None


def open_async(url: str, *, connect_timeout: float = 5.0) -> redis.asyncio.Redis:
    """`open_sync` for redis.asyncio."""
    try:
        if is_sentinel_url(url):
            target = parse_sentinel_url(url)
            sentinel = redis.asyncio.sentinel.Sentinel
            primary: redis.asyncio.Redis = _primary(sentinel, target, connect_timeout, _no_async_retry)
            return primary
        return redis.asyncio.Redis.from_url(url, **_options(connect_timeout, _no_async_retry()))
    except ValueError as exc:
        raise _bad_url(url, exc) from None


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _no_async_retry() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


# --- Sentinel URLs -------------------------------------------------------------------------------
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
_SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379[,host:port...]/service_name[/db]"
_SECONDS = ("socket_timeout", "socket_connect_timeout")
_TLS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_OPTIONS = (*_SECONDS, "sentinel_username", "sentinel_password", "min_other_sentinels", *_TLS)


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names: the sentinels to ask, the service, its database."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    #: Query options, typed: socket_timeout / socket_connect_timeout (data connections, seconds),
    #: sentinel_username / sentinel_password (AUTH to the sentinels), ssl_* (rediss+sentinel only).
    options: Mapping[str, str | float] = field(default_factory=dict)
    min_other_sentinels: int = 0


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a Sentinel URL; `ValueError` names the one that is wrong (never a password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme {parts.scheme!r} is not one of {', '.join(SENTINEL_SCHEMES)}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"no sentinel address (expected {_SENTINEL_FORM})")
    user, colon, secret = userinfo.partition(":")
    service, db = _service_and_db(parts.path)
    options = _sentinel_options(parts.query, tls=scheme == "rediss+sentinel")
    return SentinelTarget(
        sentinels=tuple(_address(item, hosts) for item in hosts.split(",")),
        service=service,
        db=db,
        username=unquote(user) if at and user else None,
        password=unquote(secret) if at and colon and secret else None,
        tls=scheme == "rediss+sentinel",
        options={k: v for k, v in options.items() if k != "min_other_sentinels"},
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
    )


def _address(item: str, hosts: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` of one sentinel (port 26379 if left out)."""
    if item.startswith("["):
        host, _, after = item[1:].partition("]")
        if after and not after.startswith(":"):
            raise ValueError(f"sentinel address {item!r} is not [host]:port")
        port = after[1:]
    else:
        host, _, port = item.partition(":") if item.count(":") <= 1 else (item, "", "")
    if not host:
        raise ValueError(f"empty sentinel host in {hosts!r} (expected {_SENTINEL_FORM})")
    if port == "":
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"sentinel port {port!r} of {item!r} is not a port number")
    return host, int(port)


def _service_and_db(path: str) -> tuple[str, int]:
    if not path.strip("/"):
        raise ValueError(f"no service name (expected {_SENTINEL_FORM})")
    pieces = [unquote(p) for p in path.strip("/").split("/")]
    if len(pieces) > 2 or not pieces[0]:
        raise ValueError(f"path {path!r} is not /service_name[/db] (expected {_SENTINEL_FORM})")
    if len(pieces) == 2 and not pieces[1].isdigit():
        raise ValueError(f"db {pieces[1]!r} is not a number")
    return pieces[0], int(pieces[1]) if len(pieces) == 2 else 0


def _sentinel_options(query: str, *, tls: bool) -> dict[str, str | float]:
    options: dict[str, str | float] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _SENTINEL_OPTIONS:
            raise ValueError(f"unknown option {key!r} (known: {', '.join(_SENTINEL_OPTIONS)})")
        if key in _TLS and not tls:
            raise ValueError(f"option {key!r} needs rediss+sentinel://")
        options[key] = _option_value(key, value)
    return options


def _option_value(key: str, value: str) -> str | float:
    if key in _SECONDS or key == "min_other_sentinels":
        try:
            number = float(value) if key in _SECONDS else int(value)
        except ValueError:
            raise ValueError(f"option {key}={value!r} is not a number") from None
        if number < 0 or (key in _SECONDS and number == 0):
            raise ValueError(f"option {key}={value!r} is out of range")
        return number
    if key == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
        raise ValueError(f"option ssl_cert_reqs={value!r} is not none, optional or required")
    return value


def _primary(
    sentinel_class: type, target: SentinelTarget, connect_timeout: float, retry: Callable[[], object]
) -> Any:
    """A client of the service's primary: its pool asks the sentinels on every new connection."""
    sentinel_kw, master_kw = _sentinel_kwargs(target, connect_timeout, retry)
    sentinel = sentinel_class(
        target.sentinels, min_other_sentinels=target.min_other_sentinels, sentinel_kwargs=sentinel_kw
    )
    return sentinel.master_for(target.service, **master_kw)


def _sentinel_kwargs(
    target: SentinelTarget, connect_timeout: float, retry: Callable[[], object]
) -> tuple[dict[str, object], dict[str, object]]:
    """(kwargs of the connections to the sentinels, kwargs of the connections to the primary).

    A sentinel answers at once or not at all: one that does not within the connect timeout is
    skipped for the next.  Neither side retries inside redis-py (see the module docstring)."""
    opts = dict(target.options)
    connect = float(opts.pop("socket_connect_timeout", connect_timeout))
    tls: dict[str, object] = {k: opts.pop(k) for k in _TLS if k in opts}
    if target.tls:
        tls["ssl"] = True
    sentinel = {
        "socket_timeout": connect,
        "socket_connect_timeout": connect,
        "retry": retry(),
        "username": opts.pop("sentinel_username", None),
        "password": opts.pop("sentinel_password", None),
        **tls,
    }
    master = {**_options(connect, retry()), "db": target.db, "username": target.username, **tls}
    master.update(password=target.password, **opts)  # what is left: socket_timeout
    return sentinel, master


def describe(connection: redis.Redis | redis.asyncio.Redis) -> str:
    """A URL-like name for a connection the caller built, for messages (no password in it)."""
    pool = connection.connection_pool
    kw = pool.connection_kwargs
    if isinstance(
        pool, (redis.sentinel.SentinelConnectionPool, redis.asyncio.sentinel.SentinelConnectionPool)
    ):
        kws = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        hosts = ",".join(_host_port(k.get("host", "localhost"), k.get("port", SENTINEL_PORT)) for k in kws)
        return f"redis+sentinel://{hosts}/{pool.service_name}/{kw.get('db', 0)}"
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
