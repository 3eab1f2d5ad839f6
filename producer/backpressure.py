"""Backpressure: how many texts wait in a model's queues, and whether a new job may join them.

The count is `keys.queued_texts_key(model)` (INCRBY'd with every enqueue, DECRBY'd by the
worker), read together with the LLEN of both lane lists in one Lua call.  The counter is exact
while every party keeps it; the LLENs bound it when one does not: each job holds at least one and
at most MAX_TEXTS_PER_JOB texts, and empty lists mean zero texts (the script then resets a
drifted counter).  The limit is soft: two producers checking at once may both get in.
"""

from __future__ import annotations

import time

from .contract import MAX_TEXTS_PER_JOB
from .errors import QueueFull
from .keys import queue_keys, queued_texts_key

# KEYS[1] = counter, KEYS[2..] = queue lists.  Returns {jobs, counter}.
COUNT_SCRIPT = """
local jobs = 0
for i = 2, #KEYS do jobs = jobs + redis.call('LLEN', KEYS[i]) end
local texts = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if jobs == 0 and texts ~= 0 then
  redis.call('SET', KEYS[1], 0)
  texts = 0
end
return {jobs, texts}
"""


def count_keys(model: str) -> list[str]:
    """The keys COUNT_SCRIPT reads, in its KEYS order."""
    return [queued_texts_key(model), *queue_keys(model)]


def estimate(jobs: int, counter: int) -> int:
    """Queued texts: the counter, kept within what `jobs` queued jobs can possibly hold."""
    return min(max(int(counter), int(jobs)), int(jobs) * MAX_TEXTS_PER_JOB)


def has_room(queued: int, n_texts: int, limit: int | None) -> bool:
    """True if a job of `n_texts` may be enqueued.

    Empty queues always admit one job, so a job larger than the limit is slow, not impossible.
    """
    return limit is None or queued == 0 or queued + n_texts <= limit


def queue_full(model: str, queued: int, limit: int, waited: float | None) -> QueueFull:
    """The one-line error for a refused submit."""
    tail = f" after waiting {waited:g}s" if waited else "; pass wait_for_room=SECONDS to wait"
    return QueueFull(
        f"queues of model {model!r} hold {queued} texts, limit {limit} (max_queued_texts){tail}",
        queued=queued,
        limit=limit,
    )


class RoomWait:
    """The I/O-free half of waiting for room under the limit, shared by the sync and async
    clients: given each count read, how long to sleep before the next (None: there is room),
    or `QueueFull` once `deadline_s` is spent (at once when it is None)."""

    def __init__(self, model: str, n_texts: int, limit: int, deadline_s: float | None) -> None:
        self.model, self.n_texts, self.limit, self.deadline_s = model, n_texts, limit, deadline_s
        self.start = time.monotonic()
        self._delay = 0.02  # re-checks: short at first, then every 0.5 s

    def after(self, queued: int) -> float | None:
        if has_room(queued, self.n_texts, self.limit):
            return None
        waited = time.monotonic() - self.start
        if self.deadline_s is None or waited >= self.deadline_s:
            raise queue_full(self.model, queued, self.limit, waited if self.deadline_s else None)
        delay, self._delay = self._delay, min(0.5, self._delay * 2)
        return min(delay, max(0.0, self.deadline_s - waited))
