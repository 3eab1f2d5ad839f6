"""Which models the gateway takes requests for: those live workers serve, and an allowlist.

Any model name used to create a queue, a counter and a job with no expiry, and then wait out
the whole timeout for a 504 (issue 15).  Workers already advertise their model in their health
record (`vecq:health:<worker>`, `keys.HEALTH_PREFIX`, refreshed every heartbeat and expiring
when the worker is gone), so `ServedModels` reads those records -- at most every
`REFRESH_S` -- and the gateway refuses any other model at once with OpenAI's `model_not_found`,
writing nothing.  The operator's allowlist (`--models`) is served whatever the workers say: with
workers scaled to zero (KEDA), a request must still queue so that the scaler sees work.

The same read gives each model's capacity, the sum of its workers' `capacity_texts_per_s`
(texts per second of engine-busy time), which `admission.py` sizes the queued-texts limit from.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio

from ..keys import HEALTH_PREFIX

#: Seconds a read of the workers' health records is trusted.
REFRESH_S = 2.0
#: A model not seen is looked up again at once if the last read is older than this (a worker
#: that just started is found on its first request, not REFRESH_S later).
RECHECK_S = 0.25


class ServedModels:
    """The models served now, from health records, cached; plus the allowlist."""

    def __init__(self, connection: redis.asyncio.Redis, allowlist: Iterable[str] = ()) -> None:
        self.connection = connection
        self.allowlist = frozenset(allowlist)
        self._live: frozenset[str] = frozenset()
        self._capacity: dict[str, float] = {}
        self._read_at = float("-inf")
        self._reading: asyncio.Future[None] | None = None

    async def names(self) -> list[str]:
        """Every model a request may name, sorted."""
        await self._refresh(older_than=REFRESH_S)
        return sorted(self._live | self.allowlist)

    async def serves(self, model: str) -> bool:
        """Whether requests for `model` may be queued.  True when Redis cannot be read: the
        enqueue that follows then answers for Redis (503), not for the model."""
        if model in self.allowlist:
            return True
        try:
            await self._refresh(older_than=REFRESH_S)
            if model not in self._live:
                await self._refresh(older_than=RECHECK_S)
        except (redis.RedisError, OSError):
            return True
        return model in self._live

    async def capacity(self, model: str) -> float:
        """Texts per second `model`'s live workers finish while busy, summed; 0.0 when none has
        measured yet, or when Redis cannot be read (the caller then falls back to its floor)."""
        try:
            await self._refresh(older_than=REFRESH_S)
        except (redis.RedisError, OSError):
            return 0.0
        return self._capacity.get(model, 0.0)

    async def _refresh(self, *, older_than: float) -> None:
        """Read the health records again if the last read is older than `older_than`; one read
        at a time, which every concurrent caller awaits (each reading on its own took a
        connection apiece: 100 under load, the very lock-out `hub.py` removes)."""
        if time.monotonic() - self._read_at < older_than:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        keys = [key async for key in self.connection.scan_iter(match=HEALTH_PREFIX + "*", count=500)]
        records = await self.connection.mget(keys) if keys else []
        capacity: dict[str, float] = {}  # every live model, measured or not (0.0)
        for model, rate in (_served_by(raw) for raw in records if raw):
            if model:
                capacity[model] = capacity.get(model, 0.0) + rate
        self._live, self._capacity = frozenset(capacity), capacity
        self._read_at = time.monotonic()


def _served_by(raw: bytes | str) -> tuple[str, float]:
    """(model, capacity) of one health record; ("", 0.0) for a stopping worker or a record that
    is not one (a worker's record is trusted for its shape, never for more than a number)."""
    try:
        record: Any = json.loads(raw)
    except (ValueError, TypeError):
        return "", 0.0
    if not isinstance(record, dict) or record.get("stopping"):
        return "", 0.0
    model, rate = record.get("model"), record.get("capacity_texts_per_s")
    if not isinstance(model, str):
        return "", 0.0
    measured = isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate < float("inf")
    return model, float(rate) if measured else 0.0
