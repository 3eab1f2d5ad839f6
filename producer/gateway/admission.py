"""How many texts a model's queues may hold before the gateway answers 429, and that answer.

A request whose texts join a queue the workers cannot drain within the request's timeout waits
the whole timeout for a 504: it costs its client that time and Redis its job, and computes
nothing.  So the gateway refuses it at once, before anything is written, with 429 and
`Retry-After` in OpenAI's error shape.  The limit is, in order:

1. the operator's `max_queued_texts`, when set;
2. else sized from the workers' measured rate (`sized_limit`): the texts the model's live
   workers finish within the timeout (their summed `capacity_texts_per_s` × `timeout`), times
   `HEADROOM`;
3. never below `queued_texts_floor`, so that a cold start -- no worker yet (KEDA
   scale-from-zero of an allowlisted model), or none that has measured itself -- still queues
   work, and the scaler sees it.

The count is the producer's (`backpressure`: the queued-texts counter bounded by the lists'
LLEN), read once per model at a time however many requests ask together (each read on its own
took a connection apiece under load, as `served.py` found).  Like the producer's limit it is
soft: requests admitted together all see the same count, so a burst may pass it by what
`max_in_flight` lets in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .. import backpressure
from ..async_client import AsyncClient
from .openai_errors import too_many
from .served import ServedModels

#: The share of the timeout's worth of work a model's queues may hold.  Below 1 because the
#: rate workers report is their engine's (texts per second of engine-busy time): the whole
#: path -- tokenizing, Redis, writing back, texts workers already hold -- finishes fewer, and
#: several workers sharing one GPU each report what they do alone.  At 0.5 the last text
#: admitted still finishes within the timeout when the served rate is half the reported one.
#: Not far below 1 because the rate is that of the batches seen lately: a worker under light
#: load runs small batches, reports a low rate, and must still be let enough texts to fill
#: its large batches (then its rate, and the limit, rise).
HEADROOM = 0.5
#: `queued_texts_floor`'s default: one largest job (`MAX_TEXTS_PER_JOB` is 4,096) is admitted
#: into empty queues anyway (`backpressure.has_room`); this many lets a few hundred typical web
#: requests of 1-32 texts queue while no worker has measured its rate.
DEFAULT_FLOOR = 1024


def sized_limit(capacity: float, timeout_s: float, *, floor: int, headroom: float = HEADROOM) -> int:
    """The queued-texts limit for `capacity` texts/s of workers and a `timeout_s` request
    timeout: what they finish in `headroom` × the timeout, never below `floor`."""
    if not capacity > 0:  # also NaN
        return floor
    return max(floor, int(capacity * timeout_s * headroom))


@dataclass(frozen=True)
class Limit:
    """A model's limit now, and why (the 429's message names it)."""

    texts: int
    #: texts per second of the model's workers (0.0: none measured)
    capacity: float
    #: "max_queued_texts", "workers' rate" or "queued_texts_floor"
    source: str


class QueuedTextsLimit:
    """The gateway's admission by queued texts: `admit` returns, or raises a 429 `ApiError`."""

    def __init__(
        self,
        client: AsyncClient,
        served: ServedModels,
        *,
        explicit: int | None,
        floor: int,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.served = served
        self.explicit = explicit
        self.floor = floor
        self.timeout_s = timeout_s
        self._counting: dict[str, asyncio.Future[int]] = {}

    async def limit(self, model: str) -> Limit:
        """`model`'s limit from the settings and the workers' latest health records."""
        capacity = await self.served.capacity(model)
        if self.explicit is not None:
            return Limit(self.explicit, capacity, "max_queued_texts")
        texts = sized_limit(capacity, self.timeout_s, floor=self.floor)
        measured = capacity > 0 and texts > self.floor
        return Limit(texts, capacity, "workers' rate" if measured else "queued_texts_floor")

    async def admit(self, model: str, n_texts: int) -> Limit:
        """Return the limit `n_texts` more texts fit under, or raise 429 before anything is
        written.  `RedisUnavailable` if the count cannot be read (the gateway's 503)."""
        limit = await self.limit(model)
        queued = await self._queued(model)
        if not backpressure.has_room(queued, n_texts, limit.texts):
            raise too_many(
                f"queues of model {model!r} hold {queued} texts, limit {limit.texts} "
                f"({_why(limit, self.timeout_s)})",
                "queue_full",
            )
        return limit

    async def _queued(self, model: str) -> int:
        """The model's queued texts; concurrent callers share one read."""
        reading = self._counting.get(model)
        if reading is None or reading.done():
            reading = self._counting[model] = asyncio.ensure_future(self.client.queued_texts(model))
        return await asyncio.shield(reading)


def _why(limit: Limit, timeout_s: float) -> str:
    if limit.source == "workers' rate":
        return f"the workers' {limit.capacity:g} texts/s × {timeout_s:g}s timeout × {HEADROOM:g}"
    return limit.source
