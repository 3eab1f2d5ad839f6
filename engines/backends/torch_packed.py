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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import Batch, TokenBatch
from ..errors import ShapeError
from ..kernels import BUFFER_MULTIPLE
from ..shapes import DEFAULT_SEQ_LENS, Shape, ShapeSet

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


@dataclass
class _Staging:
    """Pinned host buffers of one batch in flight, and the event its last copy records."""

    ids: Any
    cu: Any
    n: Any
    out: Any
    done: Any  # torch.cuda.Event

    @classmethod
    def make(cls, torch: Any, tokens: int, slots: int, dim: int) -> _Staging:
        pinned = {"pin_memory": True}
        return cls(
            torch.zeros(tokens, dtype=torch.long, **pinned),
            torch.zeros(slots + 1, dtype=torch.int32, **pinned),
            torch.zeros(1, dtype=torch.int32, **pinned),
            torch.empty((slots, dim), dtype=torch.float32, **pinned),
            torch.cuda.Event(),
        )


@dataclass
class _Started:
    """A packed batch on its way through the GPU."""

    done: Any
    out: Any  # pinned rows the device-to-host copy fills

    def ready(self) -> bool:
        return bool(self.done.query())

    def result(self) -> np.ndarray:
        self.done.synchronize()
        return self.out.numpy().copy()


@dataclass
class _Buffer:
    """One token buffer size's graph and the output tensor it writes."""

    graph: Any
    out: Any


class PackedGraphEngine:
    """Serves `PackedEncoder` through one CUDA graph per token buffer size."""

    def __init__(
        self, module: Any, *, shapes: ShapeSet, dim: int, device: str = "cuda",
        buckets: Sequence[int] = TOKEN_BUCKETS,
    ) -> None:  # fmt: skip
        import torch

        if any(T % BUFFER_MULTIPLE for T in buckets):
            raise ValueError(f"token buckets must be multiples of {BUFFER_MULTIPLE}")
        self._torch = torch
        self.module = module
        self.shapes, self.dim = shapes, dim
        self.device = torch.device(device)
        self.slots = max(s.batch for s in shapes)
        largest = max(s.tokens for s in shapes)
        ladder = sorted(buckets)
        top = next((T for T in ladder if largest <= T), _round_up(largest))
        self.buckets = (*[T for T in ladder if top > T], top)
        T_max = self.buckets[-1]
        #: What one `TokenBatch` may hold (`vecq.engines.base.packs`).
        self.token_budget, self.max_rows = T_max, self.slots
        # Inputs every graph reads (a graph of T tokens reads the first T of `ids`).
        self._ids = torch.zeros(T_max, dtype=torch.long, device=self.device)
        self._cu = torch.zeros(self.slots + 1, dtype=torch.int32, device=self.device)
        self._n = torch.zeros(1, dtype=torch.int32, device=self.device)
        # Two sets of pinned staging buffers: batch k+1 is packed into one while batch k's
        # copies still read (and write) the other.
        self._staging = [_Staging.make(torch, T_max, self.slots, dim) for _ in range(2)]
        self._turn = 0
        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream(device=self.device)
        #: Buffers that also have a long-text graph (empty unless the model reads > 512 tokens).
        long_texts = max(s.seq_len for s in shapes) > LONG_TEXTS_FROM and has_tiles(module)
        self.long_buckets = tuple(T for T in self.buckets if T >= LONG_TEXTS_FROM) if long_texts else ()
        self._graphs: dict[tuple[int, bool], _Buffer] = {}
        self.captures = 0
        self.runs_by_bucket: dict[int, int] = dict.fromkeys(self.buckets, 0)
        self.long_runs = 0  # batches that replayed a long-text graph

    def _capture(self, T: int, long: bool = False) -> _Buffer:
        torch = self._torch
        ids = self._ids[:T]
        with torch.inference_mode(), attention_tile(self.module, long=long):
            self._cu.fill_(0)
            self._cu[1:].fill_(min(T, 2))  # one 2-token text: a valid batch to warm on
            self._n.fill_(min(T, 2))
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                for _ in range(2):  # Triton compiles and autotunes outside the capture
                    self.module(ids, self._cu, self._n)
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.module(ids, self._cu, self._n)
        self.captures += 1
        return _Buffer(graph, out)

    def warmup(self) -> None:
        """Capture every token buffer (and its long-text graph), largest first so the shared
        memory pool is sized once."""
        for T in sorted(self.buckets, reverse=True):
            for long in (False, True) if T in self.long_buckets else (False,):
                if (T, long) not in self._graphs:
                    self._graphs[T, long] = self._capture(T, long)
        self._torch.cuda.synchronize(self.device)
        log.info(
            "torch packed: %d graphs captured (%d token buffers up to %d tokens, %d with a long-text tile)",
            self.captures, len(self.buckets), self.buckets[-1], len(self.long_buckets),
        )  # fmt: skip

    def run(self, batch: Batch | TokenBatch) -> np.ndarray:
        return self.start(batch).result()

    def start(self, batch: Batch | TokenBatch) -> _Started:
        """Pack `batch`, queue its copies and graph replay on the GPU, and return at once.

        Batches are finished (`result()`) in the order they were started, at most two apart:
        the staging set a batch used is reused by the batch after next.
        """
        if isinstance(batch, TokenBatch):
            if batch.real_tokens > self.token_budget or batch.rows > self.max_rows:
                raise ShapeError(
                    f"{batch.rows} texts of {batch.real_tokens} tokens are over the engine's "
                    f"{self.max_rows} texts / {self.token_budget} tokens (vecq bug)"
                )
        elif batch.shape not in self.shapes:
            raise ShapeError(f"batch shape {batch.shape} is not one of the engine's shapes (vecq bug)")
        stage = self._staging[self._turn]
        self._turn ^= 1
        stage.done.synchronize()  # the batch before last has left this set
        cu = stage.cu.numpy()
        n = pack_into(batch, stage.ids.numpy(), cu)
        stage.n.numpy()[0] = n
        T = self.buckets[bisect.bisect_left(self.buckets, n)]
        long = n >= LONG_TEXTS_FROM and T in self.long_buckets and _long_texts(cu, batch.rows, n)
        buf = self._graphs.get((T, long))
        if buf is None:
            buf = self._graphs[T, long] = self._capture(T, long)  # only if warmup was skipped
        self._ids[:n].copy_(stage.ids[:n], non_blocking=True)
        self._cu.copy_(stage.cu, non_blocking=True)
        self._n.copy_(stage.n, non_blocking=True)
        buf.graph.replay()
        self.runs_by_bucket[T] += 1
        self.long_runs += long
        out = stage.out[: batch.rows]
        out.copy_(buf.out[: batch.rows], non_blocking=True)
        stage.done.record()
        return _Started(stage.done, out)

    def close(self) -> None:
        self._graphs.clear()


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
