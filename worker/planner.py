"""The single owner of pending texts: tokenized on arrival, cut into batches of declared shapes.

Like text-embeddings-inference's queue task, one object holds every text that is waiting for the
engine and answers "what is the next batch?".  A batch is always exactly one of the engine's
shapes, so no request can ever cause a rebuild or re-warm:

- texts are grouped by the seq_len bucket their token count needs (so bulk texts of similar
  length travel together and padding stays small);
- a bucket holding a full batch (the largest batch size of its seq_len) goes at once;
- a partial batch goes when its oldest text has waited `max_wait_s`, padded up to the nearest
  declared batch size; its spare rows are filled with shorter texts that are waiting anyway
  (a padding row costs the same as a real one);
- interactive texts go before bulk texts.

Pure logic, no Redis and no threads: the worker calls it from its main thread only (tokenizing,
`encode_jobs`, may run elsewhere).  This is the planner of engines that compute padding (ONNX,
CPU, one graph per shape); an engine that packs gets `packing.TokenPlanner` instead.  Both hand
out batches with the same face (`inputs`, `placements`, `owners`, `texts`), which is all the
engine thread and the worker's loop use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from vecq.engines.base import Batch
from vecq.engines.errors import TextTooLong
from vecq.engines.shapes import Shape, ShapeSet
from vecq.engines.tokenizer import TextTokenizer, Tokenized
from vecq.producer.keys import LANES


class _HasOwner(Protocol):
    @property
    def owner(self) -> Hashable: ...


_Owned = TypeVar("_Owned", bound=_HasOwner)

#: A due partial batch takes rows of shorter buckets down to this share of its seq_len.
NEAR = 0.875


class Encoder(Protocol):
    """The tokenizer surface the planner needs (`vecq.engines.TextTokenizer` has it)."""

    def encode(self, texts: Sequence[str], *, truncate: bool = True) -> Tokenized: ...

    def encode_pairs(self, query: str, documents: Sequence[str]) -> Tokenized: ...


@dataclass(frozen=True, slots=True)
class Row:
    """One text waiting for the engine: whose it is, which of its texts, its token ids."""

    owner: Hashable
    index: int
    ids: np.ndarray
    since: float  # monotonic time its job arrived


@dataclass(frozen=True)
class PlannedBatch:
    """Rows that go through one engine call of `shape` (len(rows) <= shape.batch)."""

    shape: Shape
    rows: list[Row]
    isolated: bool = False  # all rows of one owner, after a failed mixed batch

    @property
    def owners(self) -> list[Hashable]:
        """Distinct owners, in row order."""
        return list(dict.fromkeys(r.owner for r in self.rows))

    @property
    def texts(self) -> int:
        return len(self.rows)

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, tokens) the engine computes for it: the padded shape's."""
        return self.shape.batch, self.shape.tokens

    @property
    def label(self) -> str:
        return str(self.shape)

    def inputs(self, tokenizer: TextTokenizer) -> Batch:
        """The padded batch the engine runs (on the engine thread: padding is host time)."""
        return tokenizer.make_batch([r.ids for r in self.rows], self.shape)

    def placements(self) -> list[Placement]:
        """Where each row's vector goes: one (owner, text indexes, batch rows) per job, so that
        a batch of a few jobs' many rows is placed with one numpy assignment per job."""
        by_owner: dict[Hashable, tuple[list[int], list[int]]] = {}
        for position, r in enumerate(self.rows):
            entry = by_owner.get(r.owner)
            if entry is None:
                entry = by_owner[r.owner] = ([], [])
            entry[0].append(r.index)
            entry[1].append(position)
        return [(owner, dst, src) for owner, (dst, src) in by_owner.items()]


#: (owner, indexes into the job's texts, rows of the batch's vectors): a slice or a list each,
#: of equal length.
Placement = tuple[Hashable, "slice | list[int]", "slice | list[int]"]


def by_owner(items: Sequence[_Owned]) -> list[list[_Owned]]:
    """Items grouped by their `owner`, groups and items in first-seen order (a failed mixed
    batch is retried one owner per batch)."""
    groups: dict[Hashable, list[_Owned]] = {}
    for item in items:
        groups.setdefault(item.owner, []).append(item)
    return list(groups.values())


@dataclass(frozen=True)
class NewJob:
    """A job handed to the planner: `owner` is opaque to it (the worker's WorkItem)."""

    owner: Hashable
    texts: Sequence[str]
    lane: str = "interactive"
    truncate: bool = True
    query: str | None = None  # a rerank job: its texts are tokenized as (query, text) pairs


@dataclass(frozen=True)
class Encoded:
    """Jobs with their texts' token ids (`encode_jobs`), ready for `Planner.add_encoded`."""

    jobs: list[tuple[NewJob, Tokenized]]
    refused: list[tuple[Hashable, str]]  # (owner, message): an over-long text, truncation off
    since: float  # monotonic time the jobs arrived


def encode_jobs(encoder: Encoder, jobs: Sequence[NewJob], *, now: float) -> Encoded:
    """The tokenizing half of `Planner.add`, free of planner state so that it can run on a thread
    of its own (`tokenizers` releases the GIL).  Jobs that truncate share one tokenizer call; a
    rerank job's pairs are one call per job (its query)."""
    out: list[tuple[NewJob, Tokenized]] = [
        (j, encoder.encode_pairs(j.query, j.texts)) for j in jobs if j.query
    ]
    refused: list[tuple[Hashable, str]] = []
    cutting = [j for j in jobs if j.truncate and not j.query]
    if cutting:
        tok = encoder.encode([t for j in cutting for t in j.texts], truncate=True)
        start = 0
        for j in cutting:
            out.append((j, tok.slice(start, start + len(j.texts))))
            start += len(j.texts)
    for j in jobs:
        if j.truncate or j.query:
            continue
        try:
            out.append((j, encoder.encode(j.texts, truncate=False)))
        except TextTooLong as exc:
            refused.append((j.owner, f"TextTooLong: {exc}"))
    return Encoded(out, refused, now)


class Planner:
    """Pending texts by lane and seq_len bucket, and the rule that cuts them into batches."""

    def __init__(self, shapes: ShapeSet, encoder: Encoder, *, max_wait_s: float) -> None:
        self.shapes = shapes
        self.encoder = encoder
        self.max_wait_s = max_wait_s
        self._buckets: dict[str, dict[int, deque[Row]]] = {
            lane: {L: deque() for L in shapes.seq_lens} for lane in LANES
        }
        self._isolated: deque[list[Row]] = deque()
        self._dropped: set[Hashable] = set()
        self._pending = 0

    # --- intake ------------------------------------------------------------------------------
    def add(self, jobs: Sequence[NewJob], *, now: float) -> list[tuple[Hashable, str]]:
        """Tokenize and queue the texts of `jobs`; returns (owner, message) for jobs refused whole
        (an over-long text with truncation off)."""
        return self.add_encoded(encode_jobs(self.encoder, jobs, now=now))

    def add_encoded(self, encoded: Encoded) -> list[tuple[Hashable, str]]:
        """Queue jobs `encode_jobs` tokenized (maybe on another thread); returns its refusals."""
        for job, ids in encoded.jobs:
            self._queue(job, ids, encoded.since)
        return encoded.refused

    def _queue(self, job: NewJob, tokens: Tokenized, now: float) -> None:
        lane = job.lane if job.lane in self._buckets else LANES[0]
        buckets = self._buckets[lane]
        ids = tokens.ids
        for i, row_ids in enumerate(ids):
            L = self.shapes.seq_len_for(len(row_ids))
            buckets[L].append(Row(job.owner, i, row_ids, now))
        self._pending += len(ids)

    def retry_isolated(self, batch: PlannedBatch) -> None:
        """Queue the rows of a failed mixed batch again, one owner per batch, ahead of new work,
        so that one poison text fails only its own job."""
        for rows in by_owner(batch.rows):
            self._isolated.append(rows)
            self._pending += len(rows)

    def drop(self, owner: Hashable) -> None:
        """Forget every pending row of `owner` (its job failed); done lazily as rows come up."""
        self._dropped.add(owner)

    # --- planning ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Texts still waiting (rows of dropped owners included until they are skipped)."""
        return self._pending

    def next_batch(self, now: float, *, flush: bool = False) -> PlannedBatch | None:
        """The next batch to run, or None if nothing is due yet (`flush`: everything is due)."""
        if self._isolated:
            return self._next_isolated()
        # Lane by lane: a due partial interactive batch goes before full bulk batches, else a
        # lone interactive text waits behind every full bulk batch taken (seconds under load).
        for lane in LANES:
            full = self._full_bucket(lane)
            if full is not None:
                return self._cut(lane, full, self.shapes.max_batch(full))
            due = self._due_bucket(lane, now, flush)
            if due is not None:
                return self._cut(lane, due, len(self._buckets[lane][due]))
        return None

    def next_deadline(self) -> float | None:
        """When the oldest pending text becomes due (monotonic), None if nothing is pending."""
        if self._isolated:
            return 0.0
        heads = [b[0].since for lane in LANES for b in self._buckets[lane].values() if b]
        return min(heads) + self.max_wait_s if heads else None

    def _full_bucket(self, lane: str) -> int | None:
        best: tuple[float, int] | None = None
        for L, rows in self._buckets[lane].items():
            self._skip_dropped(rows)
            if rows and len(rows) >= self.shapes.max_batch(L) and (best is None or rows[0].since < best[0]):
                best = (rows[0].since, L)
        return None if best is None else best[1]

    def _due_bucket(self, lane: str, now: float, flush: bool) -> int | None:
        """The seq_len bucket of the lane's oldest text, if that text has waited `max_wait_s`."""
        oldest: tuple[float, int] | None = None
        # longest first among equals (a job's rows share `since`): its cut takes shorter neighbours
        for L, rows in reversed(self._buckets[lane].items()):
            self._skip_dropped(rows)
            if rows and (oldest is None or rows[0].since < oldest[0]):
                oldest = (rows[0].since, L)
        if oldest is not None and (flush or now - oldest[0] >= self.max_wait_s):
            return oldest[1]
        return None

    def _cut(self, lane: str, L: int, n: int) -> PlannedBatch:
        cap = self.shapes.max_batch(L)
        rows = self._take(self._buckets[lane][L], min(n, cap))
        if len(rows) < cap:
            rows += self._neighbours(lane, L, cap - len(rows))
        shape = self.shapes.fit(len(rows), L)
        spare = shape.batch - len(rows)
        for lane2 in LANES:  # fill padding rows with shorter texts already waiting, longest first
            for L2 in reversed(self.shapes.seq_lens):
                if spare <= 0:
                    break
                if L2 < L:
                    extra = self._take(self._buckets[lane2][L2], spare)
                    rows += extra
                    spare -= len(extra)
        assert len(rows) <= shape.batch and shape in self.shapes, "planner cut an undeclared shape (vecq bug)"
        return PlannedBatch(shape, rows)

    def _neighbours(self, lane: str, L: int, n: int) -> list[Row]:
        """Up to `n` rows of the same lane from the next shorter buckets within `NEAR` of `L`.

        A partial batch is due; with fine CPU shapes (seq_len step 2) a bulk load leaves a few rows
        in many buckets, and running each remainder alone cost up to 8 calls of 1-7 rows where one
        call of 8 rows padded by a few tokens does (DESIGN.md: batches of 8 of texts sorted by
        length were the best on CPU).  Coarse GPU seq_lens are never within `NEAR`: no change there.
        """
        out: list[Row] = []
        i = self.shapes.seq_lens.index(L)
        while i > 0 and len(out) < n:
            i -= 1
            L2 = self.shapes.seq_lens[i]
            if L2 < L * NEAR:
                break
            out += self._take(self._buckets[lane][L2], n - len(out))
        return out

    def _take(self, rows: deque[Row], n: int) -> list[Row]:
        out: list[Row] = []
        while rows and len(out) < n:
            r = rows.popleft()
            self._pending -= 1
            if r.owner not in self._dropped:
                out.append(r)
        return out

    def _next_isolated(self) -> PlannedBatch | None:
        while self._isolated:
            rows = self._isolated.popleft()
            self._pending -= len(rows)
            rows = [r for r in rows if r.owner not in self._dropped]
            if not rows:
                continue
            L = self.shapes.seq_len_for(max(len(r.ids) for r in rows))
            cap = self.shapes.max_batch(L)
            if len(rows) > cap:  # put the rest back, still isolated
                self._isolated.appendleft(rows[cap:])
                self._pending += len(rows) - cap
                rows = rows[:cap]
            return PlannedBatch(self.shapes.fit(len(rows), L), rows, isolated=True)
        return None

    def _skip_dropped(self, rows: deque[Row]) -> None:
        while rows and rows[0].owner in self._dropped:
            rows.popleft()
            self._pending -= 1

    def forget_dropped(self) -> None:
        """Release the drop list once no pending row can refer to it (called when idle)."""
        if self._pending == 0:
            self._dropped.clear()
