"""One track of the packed engine: its own graphs, device inputs, staging buffers and stream.

A bulk token buffer alone leaves part of the GPU idle: its LayerNorms, attention and each GEMM's
last wave cannot fill every SM, and the next kernel waits for the slowest block.  Two batches
in flight on two streams can fill those gaps with each other's kernels: two engines so ran 15-18 %
faster than one on the H100, in a probe whose graphs still shared a cuBLAS workspace (BENCHMARKS.md,
issue 14, fourteenth session).  They cannot share graphs: a captured graph reads and writes fixed
addresses (its inputs, its memory pool, cuBLAS's workspace), so two replays of one graph at
once would trample each other.  A track is therefore everything one batch in flight needs, and
`torch_packed.PackedGraphEngine` hands each batch to one of its tracks (no relation to the
worker's queue lanes, interactive and bulk).

Each track captures on its own stream, not torch's shared capture stream: cuBLAS keeps one
workspace per (handle, stream) and bakes its address into the graph, so tracks captured on one
stream would share it and corrupt each other's GEMMs when they run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: A batch of at most this many texts replays a graph that holds its own copies (the inputs up
#: and its vectors back): `torch_packed.COPIES_IN_GRAPH_UP_TO` says which buffers have one.
FEW_ROWS = 16


@dataclass(frozen=True)
class Inputs:
    """Where n (1), cu (slots + 1) and the ids (tokens) lie in one int32 block, on the host and
    on the device alike, so that a batch goes up in one copy: each copy call cost a lone query
    8-60 µs of host time on the H200 (BENCHMARKS.md, issue 14, tenth session).  The ids start
    on a 128-byte boundary."""

    slots: int
    tokens: int

    @property
    def ids_at(self) -> int:
        return -(-(self.slots + 2) // 32) * 32

    @property
    def size(self) -> int:
        return self.ids_at + self.tokens

    def views(self, block: Any) -> tuple[Any, Any, Any]:
        """(ids, cu, n) of `block` (a torch tensor or a numpy array)."""
        return block[self.ids_at :], block[1 : self.slots + 2], block[0:1]


@dataclass
class Staging:
    """Pinned host buffers of one batch in flight, and the event its last copy records;
    `held` until that batch's vectors have been read out of `out`."""

    block: Any
    out: Any
    done: Any  # torch.cuda.Event
    held: bool = False


@dataclass
class Started:
    """A packed batch on its way through the GPU."""

    stage: Staging
    out: Any  # its pinned rows, which the device-to-host copy fills

    def ready(self) -> bool:
        return bool(self.stage.done.query())

    def result(self) -> np.ndarray:
        try:
            self.stage.done.synchronize()
            return self.out.numpy().copy()
        finally:  # read out, or failed for good: either way the set may take the next batch
            self.stage.held = False


@dataclass
class Buffer:
    """One token buffer size's graph and the output tensor it writes."""

    graph: Any
    out: Any


class GraphTrack:
    """Graphs and buffers for one batch in flight at a time, on a stream of their own.

    Two staging sets let the host pack the track's next batch while its last one still copies."""

    def __init__(self, torch: Any, layout: Inputs, *, dim: int, device: Any) -> None:
        self._torch = torch
        self.layout = layout
        self.device = device
        self.inputs = torch.zeros(layout.size, dtype=torch.int32, device=device)
        self.ids, self.cu, self.n = layout.views(self.inputs)
        pinned = {"pin_memory": True}
        self.staging = [
            Staging(
                torch.zeros(layout.size, dtype=torch.int32, **pinned),
                torch.empty((layout.slots, dim), dtype=torch.float32, **pinned),
                torch.cuda.Event(),
            )
            for _ in range(2)
        ]
        self.turn = 0
        self.stream = torch.cuda.Stream(device=device)
        self._pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, bool], Buffer] = {}
        #: (T, staging set) -> the graph that copies its own inputs and first `FEW_ROWS` rows
        self.few: dict[tuple[int, int], Buffer] = {}

    def idle(self) -> bool:
        """Whether everything this track was given has left the device: its last batch, in the
        set before `turn` (an event never recorded counts as done), ran after all the others."""
        return bool(self.staging[self.turn ^ 1].done.query())

    def free(self) -> bool:
        """Whether the staging set the next batch would use has been read out."""
        return not self.staging[self.turn].held

    def capture(self, module: Any, T: int) -> Buffer:
        """`module` over the first `T` ids, warmed (Triton compiles and autotunes) and captured
        on this track's stream, in its own pool; the caller sets the attention tile."""
        torch = self._torch
        with torch.inference_mode():
            # on the track's stream, behind whatever it still runs (a capture a batch asked for)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self.cu.fill_(0)
                self.cu[1:].fill_(min(T, 2))  # one 2-token text: a valid batch to warm on
                self.n.fill_(min(T, 2))
                for _ in range(2):
                    module(self.ids[:T], self.cu, self.n)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                out = module(self.ids[:T], self.cu, self.n)
        return Buffer(graph, out)

    def capture_few(self, module: Any, T: int, turn: int) -> Buffer:
        """`T`'s graph with a few-row batch's copies inside, for staging set `turn` (capture the
        main graph first, so Triton has compiled)."""
        torch = self._torch
        stage, used = self.staging[turn], self.layout.ids_at + T
        with torch.inference_mode():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                self.inputs[:used].copy_(stage.block[:used], non_blocking=True)
                out = module(self.ids[:T], self.cu, self.n)
                stage.out[:FEW_ROWS].copy_(out[:FEW_ROWS], non_blocking=True)
        return Buffer(graph, out)

    def next_staging(self) -> tuple[int, Staging]:
        """The staging set to pack the next batch into, once the batch before last has left it."""
        turn = self.turn
        self.turn ^= 1
        stage = self.staging[turn]
        stage.done.synchronize()
        return turn, stage

    def launch(self, turn: int, T: int, *, long: bool, n: int, rows: int) -> tuple[Started, bool]:
        """Queue the batch packed in staging set `turn` (n tokens, rows texts) on this track's
        stream: its copies and buffer `T`'s replay, or one replay of the graph that holds both
        where it has one; also whether it did that."""
        stage = self.staging[turn]
        out = stage.out[:rows]
        few = self.few.get((T, turn)) if rows <= FEW_ROWS and not long else None
        with self._torch.cuda.stream(self.stream):
            if few is not None:
                few.graph.replay()
            else:
                buf = self.graphs[T, long]
                used = self.layout.ids_at + n
                self.inputs[:used].copy_(stage.block[:used], non_blocking=True)
                buf.graph.replay()
                out.copy_(buf.out[:rows], non_blocking=True)
            stage.done.record()
        stage.held = True
        return Started(stage, out), few is not None
