"""The one narrow interface every backend implements.

A backend knows nothing about texts, tokenizers, Redis or jobs: it receives a padded batch whose
shape is one of those it was built for and returns one float32 vector per row, pooling and
normalization already applied (inside the exported graph where there is one).  An engine that
packs (`packs(engine)`: the padding-free torch engine) also takes a `TokenBatch`, the texts'
real tokens end to end, so that neither the worker nor the engine ever builds a padded array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .shapes import Shape, ShapeSet


@dataclass(frozen=True)
class Batch:
    """Token ids and attention mask of exactly one declared shape (padding rows included).

    Padding rows carry a minimal `[CLS] [SEP]` sequence rather than an all-zero mask, so that no
    backend divides by zero or softmaxes an all-masked row; their vectors are simply dropped.
    """

    input_ids: np.ndarray  # int64, (batch, seq_len)
    attention_mask: np.ndarray  # int64, (batch, seq_len)
    rows: int  # how many leading rows are real texts

    @property
    def shape(self) -> Shape:
        b, L = self.input_ids.shape
        return Shape(int(b), int(L))

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask[: self.rows].sum())


@dataclass(frozen=True)
class TokenBatch:
    """Real tokens of several texts end to end, for an engine that packs: no pad token, no
    padding row, no shape; at most the engine's `token_budget` tokens and `max_rows` texts."""

    ids: np.ndarray  # int64, (tokens,): each text's ids in turn, [CLS]/[SEP] included
    lengths: np.ndarray  # int64, (rows,)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def real_tokens(self) -> int:
        return len(self.ids)


@runtime_checkable
class Engine(Protocol):
    """What the embedder and the worker need from a backend, and nothing more."""

    shapes: ShapeSet
    dim: int

    def warmup(self) -> None:
        """Run (and, on GPU, capture or build) every declared shape once, before serving."""

    def run(self, batch: Batch) -> np.ndarray:
        """Vectors for every row of `batch`, as a (batch, dim) float32 array."""

    def close(self) -> None:
        """Release sessions, buffers and device memory."""


def packs(engine: Engine | Any) -> bool:
    """Whether `engine` takes `TokenBatch`es (it declares a `token_budget` and `max_rows`)."""
    return getattr(engine, "token_budget", None) is not None


def token_slices(lengths: np.ndarray, *, budget: int, max_rows: int) -> list[slice]:
    """Consecutive texts cut into runs of at most `budget` tokens and `max_rows` texts, in order.

    A packing engine computes real tokens only, so nothing is gained by sorting texts by length:
    cutting in order fills every batch to the budget (the last one excepted) and keeps each
    job's texts together.  A text alone may not exceed `budget` (the model's max length never
    does: engines check)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > budget:
        raise ValueError(f"a text of {int(lengths.max())} tokens is over the token budget {budget}")
    ends = np.cumsum(lengths)
    out: list[slice] = []
    start, done = 0, 0
    while start < len(lengths):
        stop = int(np.searchsorted(ends, done + budget, side="right"))
        stop = min(max(stop, start + 1), start + max_rows)
        out.append(slice(start, stop))
        done = int(ends[stop - 1])
        start = stop
    return out


class Pending(Protocol):
    """A batch an engine has begun: `result()` waits for its vectors.  An asynchronous engine's
    also has `ready()`, true once `result()` would not wait (`is_ready` asks either kind)."""

    def result(self) -> np.ndarray: ...


def is_ready(pending: Pending) -> bool:
    """Whether `pending.result()` would return at once (a `Pending` without `ready()` is
    treated as ready: it ran to the end when it was started, or it cannot say)."""
    ready = getattr(pending, "ready", None)
    return True if ready is None else bool(ready())


@dataclass(frozen=True)
class Finished:
    """A batch that ran to the end when it was started."""

    vectors: np.ndarray

    def result(self) -> np.ndarray:
        return self.vectors


def start(engine: Engine | Any, batch: Batch | TokenBatch) -> Pending:
    """Begin `batch` on `engine`, so that the caller can prepare the next one meanwhile.

    An engine whose device runs asynchronously has a `start` of its own (the packed torch
    engine: the host packs batch k+1 while the GPU runs batch k, which was 17 % of its wall time
    run by run, BENCHMARKS.md); every other engine runs the batch here.  Callers finish batches
    in the order they started them.
    """
    begin = getattr(engine, "start", None)
    if begin is not None:
        pending: Pending = begin(batch)
        return pending
    return Finished(engine.run(batch))


def run_in_turn(engine: Engine | Any, batches: Iterable[Batch | TokenBatch]) -> Iterator[np.ndarray]:
    """Each batch's vectors, in order, with batch k+1 started (and, for a lazy `batches`, made)
    before batch k is collected."""
    begun: Pending | None = None
    for batch in batches:
        pending = start(engine, batch)
        if begun is not None:
            yield begun.result()
        begun = pending
    if begun is not None:
        yield begun.result()
