"""How many texts a worker may hold (taken from Redis, not yet written back) at a time.

At most `prefetch_texts`, and at most `PREFETCH_SECONDS` of the worker's own measured engine
rate: a CPU worker doing 90 texts/s that took 4,096 texts would sit on 45 s of work other
workers could be doing (BENCHMARKS.md, "Scale-out": 1 vs 2 workers went from 1.01x to 1.88x).
Never below two of the largest batch, so full batches can always form.
"""

from __future__ import annotations

from .capacity import MovingRate

#: Seconds of engine work a worker holds at most; two keep any engine fed.
PREFETCH_SECONDS = 2.0
#: Weight kept per batch in the moving sums (~10 batches of memory).
_DECAY = 0.9


class PrefetchBudget:
    """The budget in texts (`.texts`), updated after every engine batch."""

    def __init__(self, *, cap: int, largest_batch: int) -> None:
        self.cap = cap
        self.floor = 2 * largest_batch
        self.texts = min(cap, self.floor)  # before the rate is known
        self.rate = 0.0  # texts/s of engine time
        self._rate = MovingRate(_DECAY)

    def batch_done(self, rows: int, seconds: float) -> None:
        self._rate.add(rows, seconds)
        if self._rate.per_s is not None:
            self.rate = self._rate.per_s
            self.texts = min(self.cap, max(self.floor, int(self.rate * PREFETCH_SECONDS)))
