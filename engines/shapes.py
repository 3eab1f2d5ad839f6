"""The fixed set of (batch, seq_len) shapes an engine is built and warmed for.

Engines on GPU (CUDA graphs, TensorRT profiles) pay a capture or build per shape, so vecq
declares the shapes once, in the bundle, and every batch is padded up to one of them: no request
can ever trigger a rebuild or a re-warm.  The same object plans batches for `Embedder.embed`
(all texts known up front) and answers "which shape fits" for the worker's planner.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
#: Lengths past a model's max are dropped (`grid` caps them), so a 512-token model keeps six.
DEFAULT_SEQ_LENS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: Past this length a batch holds no more tokens than the largest batch at this length does
#: (`grid`'s default token cap), so long-input models (8,192 tokens) get small batches of long
#: rows instead of 128 × 8,192-token batches no GPU holds.
LONG_FROM = 512
# On CPU a shape costs nothing to "warm", and compute follows padded tokens, so finer is faster.
CPU_BATCH_SIZES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
CPU_SEQ_STEP = 2  # padding to multiples of 8 cost ~6% more tokens on a realistic corpus, of 2 ~1%
#: Tokens per CPU batch at most (8 rows of 1,024): memory of a batch stays bounded at 8,192.
CPU_MAX_BATCH_TOKENS = 8192


@dataclass(frozen=True, order=True)
class Shape:
    """One (batch, seq_len) an engine accepts."""

    batch: int
    seq_len: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def __str__(self) -> str:
        return f"{self.batch}x{self.seq_len}"


@dataclass(frozen=True)
class PlannedBatch:
    """Rows of an input (by index) that go together through one engine call of `shape`."""

    indices: np.ndarray
    shape: Shape


class ShapeSet:
    """An immutable, sorted set of shapes with the lookups batching needs."""

    def __init__(self, shapes: Iterable[Shape]) -> None:
        unique = sorted(set(shapes))
        if not unique:
            raise ValueError("a shape set needs at least one shape")
        for s in unique:
            if s.batch < 1 or s.seq_len < 1:
                raise ValueError(f"shape {s}: batch and seq_len must be >= 1")
        self._shapes = tuple(unique)
        self._members = frozenset(unique)  # `in` is asked per batch; a CPU set has thousands
        self.seq_lens: tuple[int, ...] = tuple(sorted({s.seq_len for s in unique}))
        self._batches: dict[int, tuple[int, ...]] = {
            L: tuple(sorted(s.batch for s in unique if s.seq_len == L)) for L in self.seq_lens
        }

    @classmethod
    def grid(
        cls,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
        *,
        max_seq_len: int,
        max_batch_tokens: int | None = None,
    ) -> ShapeSet:
        """Every batch × seq_len with seq_len capped at the model's max and batch × seq_len at the
        token budget (like text-embeddings-inference's `--max-batch-tokens`).

        The model's own max length is always a seq_len, so that no text that the tokenizer
        accepts is ever left without a shape.  Without a budget, batches of lengths past
        `LONG_FROM` hold at most the tokens of the largest batch at `LONG_FROM` (no shape of a
        model of up to 512 tokens is ever dropped by that); the smallest batch size is always kept.
        """
        lens = sorted({min(n, max_seq_len) for n in seq_lens} | {max_seq_len})
        budget = max_batch_tokens or max(batch_sizes) * min(max_seq_len, LONG_FROM)
        shapes = [Shape(b, L) for L in lens for b in batch_sizes if b * L <= budget or b == min(batch_sizes)]
        return cls(shapes)

    @classmethod
    def for_cpu(cls, *, max_seq_len: int, step: int = CPU_SEQ_STEP) -> ShapeSet:
        """Fine shapes for CPU engines: batches of up to 8 (at most `CPU_MAX_BATCH_TOKENS`
        tokens), lengths in steps of `step` tokens up to `LONG_FROM`, then in steps of 1/64 of
        each power of two (8 from 512, 16 from 1,024 ... 64 from 4,096): padding stays under ~1.6%
        and a model of 8,192 tokens declares ~450 lengths, not 4,096."""
        lens = list(range(step, min(max_seq_len, LONG_FROM + 1), step))
        octave = LONG_FROM
        while octave < max_seq_len:
            lens += range(octave + octave // 64, min(2 * octave, max_seq_len) + 1, octave // 64)
            octave *= 2
        return cls.grid(CPU_BATCH_SIZES, lens, max_seq_len=max_seq_len, max_batch_tokens=CPU_MAX_BATCH_TOKENS)

    # --- lookups ---------------------------------------------------------------------------
    def __iter__(self):
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, shape: object) -> bool:
        return shape in self._members

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShapeSet) and self._shapes == other._shapes

    def __repr__(self) -> str:
        return f"ShapeSet({len(self)} shapes, seq_lens={self.seq_lens})"

    @property
    def max_seq_len(self) -> int:
        return self.seq_lens[-1]

    def batch_sizes(self, seq_len: int) -> tuple[int, ...]:
        return self._batches[seq_len]

    def max_batch(self, seq_len: int) -> int:
        return self._batches[seq_len][-1]

    def seq_len_for(self, length: int) -> int:
        """The smallest declared seq_len that holds `length` tokens."""
        i = bisect.bisect_left(self.seq_lens, length)
        if i == len(self.seq_lens):
            raise ValueError(f"length {length} is over the largest declared seq_len {self.max_seq_len}")
        return self.seq_lens[i]

    def fit(self, n: int, seq_len: int) -> Shape:
        """The smallest declared shape of this seq_len that holds `n` rows (at most the largest)."""
        sizes = self._batches[seq_len]
        i = bisect.bisect_left(sizes, n)
        return Shape(sizes[min(i, len(sizes) - 1)], seq_len)

    # --- planning --------------------------------------------------------------------------
    def plan(self, lengths: Sequence[int] | np.ndarray) -> list[PlannedBatch]:
        """Cut rows of known token lengths into batches of declared shapes, padding kept small.

        Rows are sorted by length and grouped by the seq_len bucket they need; each bucket is cut
        into full batches of the largest size, and its remainder goes in the smallest shape that
        holds it.  Every row appears in exactly one batch.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return []
        order = np.argsort(lengths, kind="stable")
        L = self.seq_len_for(int(lengths[order[-1]]))
        if lengths.size <= self.max_batch(L) and self.seq_len_for(int(lengths[order[0]])) == L:
            # One batch holds them all (an interactive call): skip the bucketing below, which
            # cost ~80 µs of a ~0.8 ms single-query call on the H100 machine (BENCHMARKS.md).
            return [PlannedBatch(order, self.fit(lengths.size, L))]
        buckets = np.searchsorted(np.asarray(self.seq_lens), lengths[order], side="left")
        if buckets[-1] >= len(self.seq_lens):
            raise ValueError(f"length {int(lengths.max())} is over the largest declared seq_len")
        out: list[PlannedBatch] = []
        for b in np.unique(buckets):
            rows = order[buckets == b]
            L = self.seq_lens[int(b)]
            step = self.max_batch(L)
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                out.append(PlannedBatch(chunk, self.fit(len(chunk), L)))
        return out

    # --- manifest form ---------------------------------------------------------------------
    def to_list(self) -> list[list[int]]:
        return [[s.batch, s.seq_len] for s in self._shapes]

    @classmethod
    def from_list(cls, items: Iterable[Sequence[int]]) -> ShapeSet:
        return cls(Shape(int(b), int(L)) for b, L in items)


def default_shapes(max_seq_len: int, device: str) -> ShapeSet:
    """Fine shapes on CPU (a shape costs nothing there, and compute follows padded tokens), the
    GPU grid on CUDA (each shape is warmed and captured once)."""
    if device.startswith("cpu"):
        return ShapeSet.for_cpu(max_seq_len=max_seq_len)
    return ShapeSet.grid(max_seq_len=max_seq_len)
