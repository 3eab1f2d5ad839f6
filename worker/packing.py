"""The planner of an engine that packs: texts end to end, cut in arrival order at a token budget.

A packing engine (`vecq.engines.base.packs`: the padding-free torch engine) computes real tokens
only and runs each batch in the smallest of its few captured token buffers, so the padded
planner's work -- grouping texts by length, one `Row` object per text, fitting shapes -- buys
nothing and cost the worker's host thread most of its time per text.  Here a job's texts stay one
`Part` (its flat token ids and lengths, as the tokenizer returned them) from arrival to the
engine, and a batch is a few parts: consecutive texts of a lane up to `budget` tokens and
`max_rows` texts, the last part split where the budget ends.  Every batch but a lane's last
therefore fills its buffer.

Priorities, as in `planner.Planner`: a lane's batch goes when it is full or its oldest text has
waited `max_wait_s`; interactive before bulk; a due batch that leaves room in the buffer it will
run in is topped up with other waiting texts (that room is computed anyway).  One more: an
interactive batch may take the engine's hand-off slot from a bulk batch not yet started
(`urgent_batch`, `put_back`), so a lone query waits behind at most the batches already on the
device.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vecq.engines.base import TokenBatch, packs
from vecq.engines.tokenizer import TextTokenizer, Tokenized
from vecq.producer.keys import LANES

from .planner import Encoded, Placement, Planner, by_owner

if TYPE_CHECKING:
    from vecq.engines import Embedder
    from vecq.engines.reranker import Reranker

    from .settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class Part:
    """Consecutive texts of one job: texts `first`.. of `owner`, with their token ids."""

    owner: Hashable
    first: int
    tokens: Tokenized
    since: float  # monotonic time its job arrived
    lane: str

    @property
    def texts(self) -> int:
        return len(self.tokens.lengths)

    def split(self, k: int) -> tuple[Part, Part]:
        """Its first `k` texts, and the rest."""
        n, tok = self.texts, self.tokens
        return (
            Part(self.owner, self.first, tok.slice(0, k), self.since, self.lane),
            Part(self.owner, self.first + k, tok.slice(k, n), self.since, self.lane),
        )


@dataclass(frozen=True)
class PackedPlan:
    """Parts that go through one engine call, end to end (`TokenBatch`)."""

    parts: list[Part]
    bucket: int  # tokens of the buffer it runs in (for the padding metric)
    isolated: bool = False  # one owner's texts alone, after a failed mixed batch

    @property
    def owners(self) -> list[Hashable]:
        return list(dict.fromkeys(p.owner for p in self.parts))

    @property
    def texts(self) -> int:
        return sum(p.texts for p in self.parts)

    @property
    def tokens(self) -> int:
        return sum(len(p.tokens.flat) for p in self.parts)

    @property
    def capacity(self) -> tuple[int, int]:
        return self.texts, self.bucket

    @property
    def label(self) -> str:
        return f"packed{self.bucket}"

    @property
    def interactive(self) -> bool:
        return any(p.lane == LANES[0] for p in self.parts)

    def inputs(self, tokenizer: TextTokenizer) -> TokenBatch:
        """The token batch: one concatenation of its parts' ids (there is nothing to pad)."""
        if len(self.parts) == 1:
            tok = self.parts[0].tokens
            return TokenBatch(tok.flat, tok.lengths)
        return TokenBatch(
            np.concatenate([p.tokens.flat for p in self.parts]),
            np.concatenate([p.tokens.lengths for p in self.parts]),
        )

    def placements(self) -> list[Placement]:
        out: list[Placement] = []
        at = 0
        for p in self.parts:
            n = p.texts
            out.append((p.owner, slice(p.first, p.first + n), slice(at, at + n)))
            at += n
        return out


#: Tokens a bulk batch holds while queries are arriving (within `MIXED_WINDOW_S` of the last):
#: a query waits behind the batches already on the device -- up to two -- so their size is its
#: tail.  Under bulk on the H200, 16k-token batches (~6.5 ms each) gave queries a p99 of 20-29 ms
#: (BENCHMARKS.md, issue 14); bulk alone keeps the full budget.
MIXED_BULK_TOKENS = 8192
MIXED_WINDOW_S = 2.0


class TokenPlanner:
    """Pending texts by lane, in arrival order, and the rule that cuts them into token batches."""

    def __init__(
        self, *, budget: int, max_rows: int, max_wait_s: float, buckets: Sequence[int] | None = None
    ) -> None:
        self.budget, self.max_rows, self.max_wait_s = budget, max_rows, max_wait_s
        self.buckets = sorted({*(b for b in buckets or () if b < budget), budget})
        self._lanes: dict[str, deque[Part]] = {lane: deque() for lane in LANES}
        self._tokens = dict.fromkeys(LANES, 0)  # dropped owners' texts included until skipped
        self._rows = dict.fromkeys(LANES, 0)
        self._isolated: deque[list[Part]] = deque()
        self._dropped: set[Hashable] = set()
        self._pending = 0
        self._query_since = -float("inf")  # when the last interactive texts arrived (monotonic)

    # --- intake ------------------------------------------------------------------------------
    def add_encoded(self, encoded: Encoded) -> list[tuple[Hashable, str]]:
        """Queue jobs `encode_jobs` tokenized; returns its refusals."""
        for job, tokens in encoded.jobs:
            if len(tokens):
                lane = job.lane if job.lane in self._lanes else LANES[0]
                self._append(Part(job.owner, 0, tokens, encoded.since, lane))
                if lane == LANES[0]:
                    self._query_since = max(self._query_since, encoded.since)
        return encoded.refused

    def _append(self, part: Part, *, front: bool = False) -> None:
        q = self._lanes[part.lane]
        q.appendleft(part) if front else q.append(part)
        self._tokens[part.lane] += len(part.tokens.flat)
        self._rows[part.lane] += part.texts
        self._pending += part.texts

    def _popleft(self, lane: str) -> Part:
        part = self._lanes[lane].popleft()
        self._tokens[lane] -= len(part.tokens.flat)
        self._rows[lane] -= part.texts
        self._pending -= part.texts
        return part

    def retry_isolated(self, batch: PackedPlan) -> None:
        """Queue the texts of a failed mixed batch again, one owner per batch, ahead of new work,
        so that one poison text fails only its own job."""
        for parts in by_owner(batch.parts):
            self._isolated.append(parts)
            self._pending += sum(p.texts for p in parts)

    def put_back(self, batch: PackedPlan) -> None:
        """A batch taken back from the engine's hand-off slot: its texts go first again."""
        if batch.isolated:
            self._isolated.appendleft(list(batch.parts))
            self._pending += batch.texts
            return
        for part in reversed(batch.parts):
            self._append(part, front=True)

    def drop(self, owner: Hashable) -> None:
        """Forget every pending text of `owner` (its job failed); done lazily as parts come up."""
        self._dropped.add(owner)

    def forget_dropped(self) -> None:
        if self._pending == 0:
            self._dropped.clear()

    # --- planning ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def waiting(self, lane: str) -> bool:
        """Texts of `lane` are waiting (an interactive one may preempt the hand-off slot)."""
        self._skip_dropped(lane)
        return bool(self._lanes[lane])

    def next_deadline(self) -> float | None:
        if self._isolated:
            return 0.0
        heads = [q[0].since for q in self._lanes.values() if q]
        return min(heads) + self.max_wait_s if heads else None

    def next_batch(self, now: float, *, flush: bool = False) -> PackedPlan | None:
        """The next batch to run, or None if nothing is due yet (`flush`: everything is due)."""
        if self._isolated:
            return self._next_isolated()
        for lane in LANES:
            self._skip_dropped(lane)
            q = self._lanes[lane]
            if not q:
                continue
            budget = self.lane_budget(lane, now)
            full = self._tokens[lane] >= budget or self._rows[lane] >= self.max_rows
            if full or flush or now - q[0].since >= self.max_wait_s:
                return self._lane_batch(lane, budget)
        return None

    def lane_budget(self, lane: str, now: float) -> int:
        """Tokens a batch of `lane` may hold now: bulk batches shrink while queries arrive."""
        if lane != LANES[0] and now - self._query_since < MIXED_WINDOW_S:
            return min(self.budget, MIXED_BULK_TOKENS)
        return self.budget

    def urgent_batch(self) -> PackedPlan | None:
        """The interactive texts waiting, now, as one batch (to preempt the hand-off slot)."""
        return self._lane_batch(LANES[0]) if self.waiting(LANES[0]) else None

    def _lane_batch(self, lane: str, budget: int | None = None) -> PackedPlan | None:
        parts, tokens, rows = self._cut(lane, budget or self.budget, self.max_rows, force_first=True)
        if not parts:
            return None
        bucket = self._bucket(tokens)
        for other in LANES:  # room left in its buffer: computed anyway, so fill it
            if other != lane and bucket > tokens and rows < self.max_rows:
                more, t, r = self._cut(other, bucket - tokens, self.max_rows - rows, force_first=False)
                parts += more
                tokens, rows = tokens + t, rows + r
        return PackedPlan(parts, bucket)

    def _bucket(self, tokens: int) -> int:
        return self.buckets[min(bisect.bisect_left(self.buckets, tokens), len(self.buckets) - 1)]

    def _cut(
        self, lane: str, budget: int, max_rows: int, *, force_first: bool
    ) -> tuple[list[Part], int, int]:
        """Leading texts of `lane` up to `budget` tokens and `max_rows` texts."""
        taken, gone = take_parts(self._lanes[lane], budget, max_rows, self._dropped, force_first=force_first)
        for part in taken + gone:
            self._tokens[lane] -= len(part.tokens.flat)
            self._rows[lane] -= part.texts
            self._pending -= part.texts
        return taken, sum(len(p.tokens.flat) for p in taken), sum(p.texts for p in taken)

    def _next_isolated(self) -> PackedPlan | None:
        while self._isolated:
            q = deque(self._isolated.popleft())
            taken, gone = take_parts(q, self.budget, self.max_rows, self._dropped, force_first=True)
            self._pending -= sum(p.texts for p in taken + gone)
            if q:  # the rest of that owner's texts, still isolated and first
                self._isolated.appendleft(list(q))
            if taken:
                return PackedPlan(taken, self._bucket(sum(len(p.tokens.flat) for p in taken)), isolated=True)
        return None

    def _skip_dropped(self, lane: str) -> None:
        q = self._lanes[lane]
        while q and q[0].owner in self._dropped:
            self._popleft(lane)


def take_parts(
    q: deque[Part], budget: int, max_rows: int, dropped: set[Hashable], *, force_first: bool
) -> tuple[list[Part], list[Part]]:
    """The leading parts of `q` up to `budget` tokens and `max_rows` texts, the last one split
    where the budget ends (its rest stays first in `q`); and the parts of dropped owners passed
    over on the way.  With `force_first`, the first text goes whatever its length, so that a
    batch is never empty (the model's max length is within every engine's budget); a top-up of
    a batch's spare room takes only what fits."""
    taken: list[Part] = []
    gone: list[Part] = []
    tokens = rows = 0
    while q and rows < max_rows:
        head = q[0]
        if head.owner in dropped:
            gone.append(q.popleft())
            continue
        t = len(head.tokens.flat)
        if tokens + t <= budget and rows + head.texts <= max_rows:
            taken.append(q.popleft())
            tokens, rows = tokens + t, rows + head.texts
            continue
        fit = int(np.searchsorted(head.tokens.offsets, budget - tokens, side="right")) - 1
        k = min(fit, max_rows - rows, head.texts - 1)
        if k <= 0 and not taken and force_first:
            k = 1
        if k >= head.texts:
            taken.append(q.popleft())
        elif k > 0:
            first, q[0] = head.split(k)
            taken.append(first)
        break
    return taken, gone


def planner_for(embedder: Embedder | Reranker, settings: WorkerSettings) -> Planner | TokenPlanner:
    """The planner of this engine: token batches for one that packs (texts end to end, cut at the
    token budget: no padding to plan), padded shapes otherwise."""
    engine = embedder.engine
    if packs(engine):
        return TokenPlanner(
            budget=min(engine.token_budget, settings.max_batch_tokens),  # type: ignore[attr-defined]
            max_rows=engine.max_rows,  # type: ignore[attr-defined]
            max_wait_s=settings.max_wait_s,
            buckets=getattr(engine, "buckets", None),
        )
    return Planner(embedder.shapes, embedder.tokenizer, max_wait_s=settings.max_wait_s)
