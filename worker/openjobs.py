"""The started jobs a worker holds, from its take until Redis has their end.

One owner for all of it: each open job's (n, dim) output array filled row by row as batches come
back (so a job's vectors come out in its own order however its texts were batched), the text
counts the take policy budgets on, and what is done, failed or refused but not yet written.
A job leaves exactly once: done (handed to the finishing thread), failed, or dropped because
recovery gave it to another worker.  Main thread only; no Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from vecq.engines.batching import truncate_dims

from .planner import Placement
from .validation import Rejected, WorkItem


@dataclass(frozen=True)
class Failure:
    """A started job that cannot finish: its one-line reason, and whether rq Retry applies."""

    item: WorkItem
    reason: str
    kind: str  # metrics label
    retry: bool = True


@dataclass
class Tally:
    """What this worker has ended (for its health record, logs and tests)."""

    finished: int = 0
    failed: int = 0
    texts: int = 0  # texts embedded (rows the engine returned for open jobs)


class _Slot:
    __slots__ = ("left", "out")

    def __init__(self, out: np.ndarray) -> None:
        self.out = out
        self.left = len(out)


class OpenJobs:
    """Open jobs by item (insertion order), with their counts and outboxes."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._open: dict[WorkItem, _Slot] = {}
        self._done: list[WorkItem] = []  # complete, not yet handed to the finishing thread
        self._failures: list[Failure] = []
        self._refusals: list[Rejected] = []
        self.texts = 0  # of open jobs, complete ones not yet handed over included
        self.interactive_texts = 0
        self.tally = Tally()

    # --- what is held ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[WorkItem]:
        return iter(list(self._open))

    def __contains__(self, item: object) -> bool:
        return item in self._open

    @property
    def idle(self) -> bool:
        """Nothing open and nothing left to write."""
        return not (self._open or self._failures or self._refusals)

    def overdue(self, now: float) -> list[WorkItem]:
        """Open, unfinished jobs held longer than their timeout (monotonic `now`)."""
        return [i for i, s in self._open.items() if s.left and now - i.taken_at > i.timeout]

    # --- changes -----------------------------------------------------------------------------
    def hold(self, items: Iterable[WorkItem]) -> None:
        for item in items:
            self._open[item] = _Slot(np.empty((len(item.texts), self.dim), dtype=np.float32))
            self.texts += len(item.texts)
            if item.lane == "interactive":
                self.interactive_texts += len(item.texts)

    def fill(self, placements: Iterable[Placement], vectors: np.ndarray) -> None:
        """Place a batch's vectors at their texts' indexes, one numpy assignment per placement
        (a job's run of texts, or its rows of a padded batch); a job no longer open is skipped.
        A token batch holds up to 2,048 texts of a few dozen jobs: row-by-row copies were the
        worker's main-thread hot spot."""
        for owner, dst, src in placements:
            slot = self._open.get(owner)  # type: ignore[call-overload]
            if slot is None or not slot.left:
                continue
            slot.out[dst] = vectors[src]
            slot.left -= (dst.stop - dst.start) if isinstance(dst, slice) else len(dst)
            if slot.left == 0:
                self._done.append(owner)  # type: ignore[arg-type]

    def take_done(self) -> list[tuple[WorkItem, np.ndarray]]:
        """The complete jobs, with their vectors, closed here: the finishing thread has them now."""
        done = [(item, truncate_dims(self._close(item).out, item.dimensions)) for item in self._done]
        self._done = []
        return done

    def fail(self, item: WorkItem, reason: str, kind: str, *, retry: bool) -> bool:
        """Close an unfinished open job as failed (see `unwritten`); False if it
        is not open, or already complete."""
        slot = self._open.get(item)
        if slot is None or not slot.left:
            return False
        self._close(item)
        self._failures.append(Failure(item, reason, kind, retry))
        return True

    def drop(self, item: WorkItem) -> bool:
        """Forget a job recovery gave to another worker (nothing is written for it)."""
        if item not in self._open:
            return False
        if self._open[item].left == 0:
            self._done.remove(item)
        self._close(item)
        return True

    def refuse(self, rejected: Iterable[Rejected]) -> None:
        self._refusals += rejected

    @property
    def unwritten(self) -> tuple[list[Failure], list[Rejected]]:
        """Failures and refusals not written yet; they stay here until `written()`, so a write
        whose connection was lost is repeated (both writes are safe to repeat)."""
        return list(self._failures), list(self._refusals)

    def written(self) -> None:
        self._failures, self._refusals = [], []

    def _close(self, item: WorkItem) -> _Slot:
        slot = self._open.pop(item)
        self.texts -= len(item.texts)
        if item.lane == "interactive":
            self.interactive_texts -= len(item.texts)
        return slot
