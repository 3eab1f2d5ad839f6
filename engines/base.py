"""The one narrow interface every backend implements.

A backend knows nothing about texts, tokenizers, Redis or jobs: it receives a padded batch whose
shape is one of those it was built for and returns one float32 vector per row, pooling and
normalization already applied (inside the exported graph where there is one).
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


class Pending(Protocol):
    """A batch an engine has begun: `result()` waits for its vectors."""

    def result(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Finished:
    """A batch that ran to the end when it was started."""

    vectors: np.ndarray

    def result(self) -> np.ndarray:
        return self.vectors


def start(engine: Engine | Any, batch: Batch) -> Pending:
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


def run_in_turn(engine: Engine | Any, batches: Iterable[Batch]) -> Iterator[np.ndarray]:
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
