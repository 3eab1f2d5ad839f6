"""torch on CUDA, padding-free: each batch packed into a fixed token buffer, one graph per size.

The write-up vecq grew from found that TensorRT re-warms whenever the batch shape changes;
vecq's answer was a fixed set of padded (batch, seq_len) shapes, each warmed once.  Padding is
the price: a 39-token text in a 64-token row computes 25 pad tokens.  This engine keeps the
answer and drops the price.  It accepts the same padded batches as every engine (any declared
shape), lays their real tokens end to end into the smallest of a few token buffers
(`TOKEN_BUCKETS`) that holds them, and replays that buffer's CUDA graph: the GPU only ever
sees these few sizes, captured at warmup, and never a pad token.  The worker and
`Embedder.embed` hand it `TokenBatch`es (`token_budget`, `max_rows`): the texts' ids end to end,
cut in order at the budget, so every buffer but a run's last is full and no padded array is
ever built; a padded `Batch` of any declared shape is still accepted (parity checks, tests).

One H200 (BENCHMARKS.md, issue 14): see the engine rows there.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..base import Batch, TokenBatch
from ..errors import ShapeError
from ..kernels import BUFFER_MULTIPLE
from ..shapes import DEFAULT_SEQ_LENS, Shape, ShapeSet
from .graph_track import FEW_ROWS, GraphTrack, Inputs, Started

log = logging.getLogger(__name__)

#: Token buffer sizes, each a multiple of the attention block.  Fine steps near the top, where
#: bulk batches land, keep the filler share small (a batch of 17k tokens runs in 20k, not 32k);
#: the smallest holds a lone query.
TOKEN_BUCKETS: tuple[int, ...] = (
    128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 10240, 12288, 14336, 16384,
    20480, 24576, 28672, 32768,
)  # fmt: skip
#: Padded shapes are declared up to this many tokens (the largest buffer: real <= padded).
MAX_TOKENS = TOKEN_BUCKETS[-1]
#: A buffer whose texts average this many tokens or more (weighted by tokens: what attention's
#: cost follows) replays a second graph, captured with `kernels.LONG_ATTENTION_CONFIG`: 17-19 %
#: faster attention from 512-token texts up, 7 % slower whole buffers at 53 (BENCHMARKS.md,
#: issue 16).  Only models that read more than this many tokens get the second graphs: at 512 the
#: whole buffer gains 1 %, not worth twice the captures.
LONG_TEXTS_FROM = 512
#: Buffers up to this size get one more graph per staging set that holds its own copies: the
#: inputs up from that set's pinned block, and the first `graph_track.FEW_ROWS` vectors back.  A
#: batch of that few texts (a lone query) then starts with one replay and no copy calls, each of
#: which cost the host 8-60 µs beside the ~0.35 ms the small buffer's kernels take
#: (BENCHMARKS.md, issue 14, tenth and fourteenth sessions).
COPIES_IN_GRAPH_UP_TO = 1024
#: Batches that run side by side, each on a track of its own (`graph_track`): the engine thread
#: keeps two in flight (batch k+1 starts before k is collected), so two tracks would overlap
#: them.  One until two have passed the GPU tests on a card: two engines on two streams ran
#: 15-18 % faster than one on the H100 (BENCHMARKS.md, issue 14, fourteenth session), but that
#: probe shared a cuBLAS workspace, which tracks do not, and no device could be had to rerun it.
TRACKS = 1


def packed_shapes(max_seq_len: int, *, max_tokens: int = MAX_TOKENS) -> ShapeSet:
    """The padded shapes the worker plans with: powers of two up to `max_tokens` per batch.

    They cost nothing to declare (graphs follow token buffers, not shapes), so they go up to
    batches of 2,048 short texts: the planner then fills a whole buffer with one batch.
    """
    lens = sorted({min(L, max_seq_len) for L in DEFAULT_SEQ_LENS} | {max_seq_len})
    shapes = []
    for L in lens:
        b = 1
        while b * L <= max_tokens or b == 1:
            shapes.append(Shape(b, L))
            b *= 2
    return ShapeSet(shapes)


class PackedGraphEngine:
    """Serves `PackedEncoder` through one CUDA graph per token buffer size, in each of `tracks`
    tracks that run side by side."""

    def __init__(
        self, module: Any, *, shapes: ShapeSet, dim: int, device: str = "cuda",
        buckets: Sequence[int] = TOKEN_BUCKETS, tracks: int = TRACKS,
    ) -> None:  # fmt: skip
        import torch

        if any(T % BUFFER_MULTIPLE for T in buckets):
            raise ValueError(f"token buckets must be multiples of {BUFFER_MULTIPLE}")
        if tracks < 1:
            raise ValueError(f"tracks must be at least 1, not {tracks}")
        self._torch = torch
        self.module = module
        self.shapes, self.dim = shapes, dim
        self.device = torch.device(device)
        self.slots = max(s.batch for s in shapes)
        largest = max(s.tokens for s in shapes)
        ladder = sorted(buckets)
        top = next((T for T in ladder if largest <= T), _round_up(largest))
        self.buckets = (*[T for T in ladder if top > T], top)
        #: What one `TokenBatch` may hold (`vecq.engines.base.packs`).
        self.token_budget, self.max_rows = self.buckets[-1], self.slots
        self._layout = Inputs(self.slots, self.buckets[-1])
        self.tracks = [GraphTrack(torch, self._layout, dim=dim, device=self.device) for _ in range(tracks)]
        self._next = 0  # the track the next batch goes to, unless another is idle
        #: Buffers that also have a long-text graph (empty unless the model reads > 512 tokens).
        long_texts = max(s.seq_len for s in shapes) > LONG_TEXTS_FROM and has_tiles(module)
        self.long_buckets = tuple(T for T in self.buckets if T >= LONG_TEXTS_FROM) if long_texts else ()
        self.captures = 0  # graphs captured, every track's
        self.runs_by_bucket: dict[int, int] = dict.fromkeys(self.buckets, 0)
        self.runs_by_track = [0] * tracks
        self.long_runs = 0  # batches that replayed a long-text graph
        self.few_runs = 0  # batches that replayed a graph holding its own copies

    def _capture(self, track: GraphTrack, T: int, long: bool = False) -> None:
        with attention_tile(self.module, long=long):
            track.graphs[T, long] = track.capture(self.module, T)
        self.captures += 1

    def _capture_few(self, track: GraphTrack) -> None:
        if self.slots < FEW_ROWS:  # an engine of fewer slots keeps the copy calls
            return
        try:
            with attention_tile(self.module, long=False):
                for T in sorted((T for T in self.buckets if T <= COPIES_IN_GRAPH_UP_TO), reverse=True):
                    for turn in (0, 1):
                        track.few[T, turn] = track.capture_few(self.module, T, turn)
        except RuntimeError as exc:  # this torch cannot capture pinned copies: the calls stay
            track.few.clear()
            log.warning("torch packed: copies inside graphs refused (%s); copying per batch", exc)

    def warmup(self) -> None:
        """Capture every track's token buffers (and long-text graphs), largest first so each
        track's memory pool is sized once."""
        for track in self.tracks:
            for T in sorted(self.buckets, reverse=True):
                for long in (False, True) if T in self.long_buckets else (False,):
                    if (T, long) not in track.graphs:
                        self._capture(track, T, long)
            if not track.few:
                self._capture_few(track)
        self._torch.cuda.synchronize(self.device)
        log.info(
            "torch packed: %d graphs captured (%d tracks of %d token buffers up to %d tokens, %d with "
            "a long-text tile)", self.captures, len(self.tracks), len(self.buckets), self.buckets[-1],
            len(self.long_buckets),
        )  # fmt: skip

    def run(self, batch: Batch | TokenBatch) -> np.ndarray:
        return self.start(batch).result()

    def start(self, batch: Batch | TokenBatch) -> Started:
        """Pack `batch`, queue its copies and graph replay on a track, and return at once.

        Batches are finished (`result()`) in the order they were started, at most two per track
        apart: the staging set a batch used is reused by its track's batch after next.
        """
        if isinstance(batch, TokenBatch):
            if batch.real_tokens > self.token_budget or batch.rows > self.max_rows:
                raise ShapeError(
                    f"{batch.rows} texts of {batch.real_tokens} tokens are over the engine's "
                    f"{self.max_rows} texts / {self.token_budget} tokens (vecq bug)"
                )
        elif batch.shape not in self.shapes:
            raise ShapeError(f"batch shape {batch.shape} is not one of the engine's shapes (vecq bug)")
        k = self._pick_track()
        track = self.tracks[k]
        turn, stage = track.next_staging()
        ids, cu, n_real = self._layout.views(stage.block.numpy())
        n = pack_into(batch, ids, cu)
        n_real[0] = n
        T = self.buckets[bisect.bisect_left(self.buckets, n)]
        long = n >= LONG_TEXTS_FROM and T in self.long_buckets and _long_texts(cu, batch.rows, n)
        if (T, long) not in track.graphs:
            self._capture(track, T, long)  # only if warmup was skipped
        started, few = track.launch(turn, T, long=long, n=n, rows=batch.rows)
        self.runs_by_bucket[T] += 1
        self.runs_by_track[k] += 1
        self.long_runs += long
        self.few_runs += few
        return started

    def _pick_track(self) -> int:
        """The next track in turn, or the first idle one after it: a query that comes while a
        track runs a bulk batch goes beside that batch, not behind it.  Only a track whose next
        staging set has been read out can take a batch (its pinned rows would be overwritten)."""
        L = len(self.tracks)
        order = [i % L for i in range(self._next, self._next + L)]
        free = [k for k in order if self.tracks[k].free()]
        if not free:
            raise RuntimeError(
                f"{2 * L} batches started and none collected: the engine holds at most that many (vecq bug)"
            )
        k = next((k for k in free if self.tracks[k].idle()), free[0])
        self._next = (k + 1) % L
        return k

    def close(self) -> None:
        for track in self.tracks:
            track.graphs.clear()
            track.few.clear()


def pack_into(batch: Batch | TokenBatch, ids: np.ndarray, cu: np.ndarray) -> int:
    """Lay the batch's real tokens end to end into `ids` and their cumulative lengths into `cu`
    (slots past the batch's rows stay empty: cu = n); returns n, the real tokens."""
    rows = batch.rows
    if rows > len(cu) - 1:
        raise ShapeError(f"{rows} rows for {len(cu) - 1} sequence slots (vecq bug)")
    if isinstance(batch, TokenBatch):  # already end to end: one copy
        lengths, n = batch.lengths, batch.real_tokens
        ids[:n] = batch.ids
    else:
        mask = batch.attention_mask[:rows].astype(bool, copy=False)
        lengths = mask.sum(axis=1)
        n = int(lengths.sum())
        ids[:n] = batch.input_ids[:rows][mask]
    cu[0] = 0
    cu[1 : rows + 1] = np.cumsum(lengths)
    cu[rows + 1 :] = n
    return n


def _long_texts(cu: np.ndarray, rows: int, n: int) -> bool:
    """Whether the packed texts' token-weighted mean length reaches `LONG_TEXTS_FROM`."""
    lengths = np.diff(cu[: rows + 1]).astype(np.int64)
    return int(lengths @ lengths) >= LONG_TEXTS_FROM * n


def has_tiles(module: Any) -> bool:
    """Whether `module` runs a packed encoder, whose attention tile a capture can choose."""
    return any(hasattr(m, "attention_config") for m in module.modules())


@contextmanager
def attention_tile(module: Any, *, long: bool) -> Iterator[None]:
    """Capture `module` with the long-text attention tile (`long`) or the default one."""
    from ..kernels import ATTENTION_CONFIG, LONG_ATTENTION_CONFIG

    encoders = [m for m in module.modules() if hasattr(m, "attention_config")]
    for e in encoders:
        e.attention_config = LONG_ATTENTION_CONFIG if long else ATTENTION_CONFIG
    try:
        yield
    finally:
        for e in encoders:
            e.attention_config = ATTENTION_CONFIG


def _round_up(tokens: int) -> int:
    return -(-tokens // BUFFER_MULTIPLE) * BUFFER_MULTIPLE
