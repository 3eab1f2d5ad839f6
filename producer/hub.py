"""`ResultHub`: one reader waits for every result an asyncio process awaits.

Waiting one `XREAD BLOCK` per request held one Redis connection per waiting request: at
redis-py's pool size (100) every further request of a gateway -- `/health` too -- got 503
while Redis was fine (issue 15).  Here one task holds one connection and blocks on the result
streams of all waiting jobs at once (`XREAD BLOCK ... STREAMS k1 k2 ...`), decodes each entry
with the same code as a single wait (`results.scan`: RETRIED markers skipped, failures raised)
and hands it to the request's future.  A new waiter wakes the reader (CLIENT UNBLOCK from the
hub's other connection), so its key is in the next read; an entry already written is read from
the stream's start, so nothing is missed however late a waiter joins.  One wake-up is in
flight at a time, so thousands of waiting requests cost two connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np
import redis
import redis.asyncio

from .connection import RetryPolicy, acall, open_async
from .errors import JobTimeout, RedisUnavailable, VecqError
from .keys import result_key
from .results import MAX_BLOCK_MS, Entry, scan

log = logging.getLogger(__name__)

#: Longest block of the shared read while someone waits: a wake-up that raced the read's start
#: (CLIENT UNBLOCK arriving before the XREAD) costs at most this.
HUB_BLOCK_MS = min(MAX_BLOCK_MS, 250)


@dataclass
class _Waiter:
    job_id: str
    future: asyncio.Future[np.ndarray]
    cursor: bytes = b"0-0"


@dataclass
class ResultHub:
    """Shared waiting for one Redis URL; create and use it inside one event loop."""

    url: str
    policy: RetryPolicy
    connect_timeout: float = 5.0
    _waiting: dict[str, list[_Waiter]] = field(default_factory=dict, init=False)  # by stream key
    _client: redis.asyncio.Redis | None = field(default=None, init=False)
    _reader: asyncio.Task[None] | None = field(default=None, init=False)
    _conn: redis.asyncio.Connection | None = field(default=None, init=False)  # the reader's own
    _reader_id: int | None = field(default=None, init=False)  # its CLIENT ID
    _reading: bool = field(default=False, init=False)  # an XREAD is on its way or blocking
    _waking: bool = field(default=False, init=False)  # a CLIENT UNBLOCK is on its way
    _wake_again: bool = field(default=False, init=False)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiting.values())

    async def wait(self, job_id: str, timeout: float | None) -> np.ndarray:
        """The job's vectors; `JobFailed` for its failure, `JobTimeout` after `timeout` s,
        `RedisUnavailable` when the reader cannot reach Redis within the retry policy."""
        key = result_key(job_id)
        waiter = _Waiter(job_id, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(key, []).append(waiter)
        try:
            self._ensure_reader()
            await self._wake()
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            raise JobTimeout(job_id, timeout or 0.0) from None
        finally:
            self._forget(key, waiter)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the reader --------------------------------------------------------------------------
    def _ensure_reader(self) -> None:
        if self._client is None:
            self._client = open_async(self.url, connect_timeout=self.connect_timeout)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_all(), name="vecq-results")

    async def _wake(self) -> None:
        """Unblock the reader's XREAD so that it reads again with the new keys (best effort: a
        lost wake-up costs at most `HUB_BLOCK_MS`).  One wake-up at a time, however many
        waiters arrive meanwhile (each in its own would take a connection again): one that
        arrives during a wake-up asks for one more after it."""
        if self._waking:
            self._wake_again = True
            return
        self._waking = True
        try:
            again = True
            while again:
                self._wake_again = False
                if self._reading and self._reader_id is not None and self._client is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        await self._client.client_unblock(self._reader_id)
                again = self._wake_again
        finally:
            self._waking = False

    async def _read_all(self) -> None:
        """Read every waiting stream until nobody waits; a Redis that stays away fails them all."""
        try:
            while self._waiting:
                try:
                    reply = await acall(self.policy, self.url, self._read_once)
                except VecqError as exc:
                    self._fail_all(exc)
                    return
                self._deliver(reply)
        except Exception as exc:  # a vecq bug: say so in every waiter rather than hang them
            log.exception("result reader crashed")
            self._fail_all(RedisUnavailable(f"result reader crashed: {type(exc).__name__}: {exc}"))
        finally:
            await self._drop_connection(disconnect=False)

    async def _read_once(self) -> object:
        """One XREAD BLOCK over every waiting stream, on the reader's own connection (kept while
        it reads, so that its client id is the one a wake-up unblocks)."""
        assert self._client is not None
        if self._conn is None:
            self._conn = await self._client.connection_pool.get_connection()
        conn = self._conn
        try:
            if self._reader_id is None:
                await conn.send_command("CLIENT", "ID")
                self._reader_id = int(await conn.read_response())
            waiting = [(key, ws[0].cursor) for key, ws in self._waiting.items() if ws]
            keys, cursors = [k for k, _ in waiting], [c for _, c in waiting]
            self._reading = True
            await conn.send_command("XREAD", "BLOCK", HUB_BLOCK_MS, "STREAMS", *keys, *cursors)
            return await conn.read_response()
        except BaseException:
            await self._drop_connection(disconnect=True)  # a reply may still be on its way
            raise
        finally:
            self._reading = False

    async def _drop_connection(self, *, disconnect: bool) -> None:
        conn, self._conn, self._reader_id = self._conn, None, None
        if conn is not None and self._client is not None:
            if disconnect:
                await conn.disconnect()
            await self._client.connection_pool.release(conn)

    def _deliver(self, reply: object) -> None:
        for key, entries in raw_entries(reply):
            for waiter in self._waiting.get(key, []):
                if waiter.future.done():
                    continue
                try:
                    vectors, last = scan(waiter.job_id, entries)
                except VecqError as exc:
                    waiter.future.set_exception(exc)
                    continue
                waiter.cursor = last or waiter.cursor
                if vectors is not None:
                    waiter.future.set_result(vectors)

    def _fail_all(self, exc: VecqError) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    def _forget(self, key: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiting.pop(key, None)
        if not waiter.future.done():
            waiter.future.cancel()
        elif not waiter.future.cancelled():
            waiter.future.exception()  # retrieved: no "exception never retrieved" warning


def raw_entries(reply: object) -> list[tuple[str, list[Entry]]]:
    """An unparsed XREAD reply (RESP3 map or RESP2 array; each entry's fields a flat list) as
    [(stream key, [(entry id, fields)])]."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    out = []
    for key, entries in items:  # type: ignore[union-attr]
        name = key.decode() if isinstance(key, bytes) else str(key)
        out.append((name, [(e[0], dict(zip(e[1][::2], e[1][1::2], strict=True))) for e in entries]))
    return out
