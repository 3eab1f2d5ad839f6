"""What to take from Redis next: how many texts, from which lanes, whether to block, whether to
send the next take ahead.  Pure: it reads a `Load` snapshot and answers; `Intake` carries out.

The rules, each measured (BENCHMARKS.md, "Queue path"):
- a worker holds at most its prefetch budget (`PrefetchBudget`: ~2 s of its measured engine
  rate), counting every text it has started and not yet ended in Redis, so a slow worker
  leaves the rest queued for others;
- it takes when a quarter of the budget is free, or when the engine is about to run dry
  (`LOW_WATER_ROWS`): refilling in big gulps keeps round trips per job low;
- while jobs keep coming (a take came back at least half full), the next take is sent ahead,
  so Redis runs it on its own core while the worker validates, tokenizes and writes; a take
  sent ahead is collected once Redis has answered, or at once when the engine runs low;
- while bulk texts fill the budget, a side take of the interactive lane alone
  (`INTERACTIVE_BUDGET` texts) still lets web requests in: at once when the lane watch saw one
  waiting (`lanewatch.LaneWatch`), else while bulk holds over half the budget;
- it blocks (`idle_wait_s`) only when it holds nothing at all, and never in burst mode;
- once stopping, it takes nothing new, but still collects a take already sent (its jobs are
  started in Redis: they must run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .prefetch import PrefetchBudget

#: Texts of interactive jobs a side take may hold while bulk work fills the prefetch budget.
INTERACTIVE_BUDGET = 256
#: Rows waiting for the engine (planned or tokenizing) below which it is about to run dry.
LOW_WATER_ROWS = 256


@dataclass(frozen=True)
class Load:
    """What the worker holds right now."""

    held_texts: int  # started in Redis and not ended there: open, or done and being written
    open_texts: int  # of open jobs (not yet done, failed or handed to the finishing thread)
    interactive_texts: int  # of open interactive jobs
    pending_rows: int  # waiting for the engine: planned, or still tokenizing
    idle: bool  # nothing open, tokenizing, running or being written
    query_waiting: bool = False  # the lane watch saw a job on the interactive lane, not yet taken


@dataclass(frozen=True)
class Take:
    """One take to carry out."""

    budget_texts: int
    first_lane_only: bool = False  # a side take of the interactive lane
    block_s: float = 0.0  # how long to wait for a job when none is waiting


class TakePolicy:
    """The take decisions of one worker (its only mutable state: stopping, and whether jobs keep
    coming)."""

    def __init__(self, *, lanes: tuple[str, ...], prefetch: PrefetchBudget, idle_wait_s: float) -> None:
        self.lanes = lanes
        self.prefetch = prefetch
        self.idle_wait_s = idle_wait_s
        self.stopping = False
        self.flowing = False  # the last take came back at least half full: send the next ahead

    @property
    def budget(self) -> int:
        return self.prefetch.texts

    def next_take(
        self, load: Load, *, ahead: bool, ahead_ready: Callable[[], bool], burst: bool
    ) -> Take | None:
        """The take to make this pass, or None.  With a take sent `ahead`, the take collects it."""
        if ahead:
            if self.stopping or load.pending_rows < LOW_WATER_ROWS or ahead_ready():
                return Take(self.budget - load.held_texts)
            return None
        if self.stopping:
            return None
        if self.wants_more(load):
            block = 0.0 if burst or not load.idle else self.idle_wait_s
            return Take(self.budget - load.held_texts, block_s=block)
        room = self.interactive_room(load)
        if room > 0:
            return Take(room, first_lane_only=True)
        return None

    def took(self, take: Take, texts: int) -> None:
        """Record what a take found: jobs keep coming when it came back at least half full (a
        take that drained its queue -- a lone request -- sends nothing ahead: that round trip
        and its script sat between a query's result and its write).  A side take says nothing
        about the flow of bulk work."""
        if not take.first_lane_only:
            self.flowing = texts > 0 and 2 * texts >= take.budget_texts

    def take_ahead(self, load: Load, *, taken_texts: int = 0) -> int | None:
        """Texts for a take to send ahead now (`taken_texts`: just taken, not yet held), or None."""
        if self.stopping or not self.flowing or not self.wants_more(load, taken_texts):
            return None
        return self.budget - load.held_texts - taken_texts

    def wants_more(self, load: Load, extra: int = 0) -> bool:
        """A quarter of the budget is free, or the engine is about to run dry (`extra`: texts
        taken but not held yet, which count as held and as pending)."""
        budget, held = self.budget, load.held_texts + extra
        rows = load.pending_rows + extra
        return held <= budget - budget // 4 or (held < budget and rows < LOW_WATER_ROWS)

    def interactive_room(self, load: Load) -> int:
        """Texts of interactive jobs a side take may still get while bulk fills the budget."""
        if self.lanes[:1] != ("interactive",) or len(self.lanes) < 2:
            return 0
        # Asked only when no ordinary take is due.  A query the lane watch saw waiting is taken
        # now; otherwise a side take is tried only while bulk holds over half the budget (texts
        # being written count against the budget too, so bulk may hold less while no ordinary
        # take is made: then the watch is what lets queries in).  A side take every pass cost
        # one worker ~5 % of its bulk rate in round trips on the H200 (BENCHMARKS.md, issue 14).
        bulk_texts = load.open_texts - load.interactive_texts
        if not load.query_waiting and bulk_texts <= self.budget // 2:
            return 0
        return max(0, INTERACTIVE_BUDGET - load.interactive_texts)

    def full(self, load: Load) -> bool:
        """Open jobs fill the budget: nothing can be fed before the engine returns a batch."""
        return load.open_texts >= self.budget
