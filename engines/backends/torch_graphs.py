"""torch on CUDA with one captured CUDA graph per declared shape.

Eager PyTorch spends more time launching BERT's ~100 small kernels than the GPU spends running
them at small batch.  Capturing each shape once at warmup turns a batch into: copy ids and mask
into the shape's static (pinned → device) buffers, replay, copy the vectors out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import Batch
from ..errors import ShapeError
from ..shapes import Shape, ShapeSet

log = logging.getLogger(__name__)


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    ids: Any  # static device tensors read by the graph
    mask: Any
    out: Any  # static device tensor the graph writes
    host_ids: Any  # pinned host staging buffers
    host_mask: Any
    host_out: Any


class TorchGraphEngine:
    """Runs `module(input_ids, attention_mask) -> (B, dim)` through per-shape CUDA graphs."""

    def __init__(self, module: Any, *, shapes: ShapeSet, dim: int, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self.module = module
        self.shapes, self.dim = shapes, dim
        self.device = torch.device(device)
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[Shape, _Graph] = {}
        self._stream = torch.cuda.Stream(device=self.device)
        self.captures = 0
        self.replays = 0  # batches served by a graph replay (tests check every batch is one)

    def _capture(self, shape: Shape) -> _Graph:
        torch = self._torch
        if shape not in self.shapes:
            raise ShapeError(f"batch shape {shape} is not one of the engine's shapes (vecq bug)")
        dims = (shape.batch, shape.seq_len)
        ids = torch.zeros(dims, dtype=torch.long, device=self.device)
        mask = torch.ones(dims, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            # Side-stream warm-up, as torch.cuda.graphs documents, so lazy inits stay out of the graph.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                for _ in range(2):
                    self.module(ids, mask)
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.module(ids, mask).float()
        self.captures += 1
        return _Graph(
            graph, ids, mask, out,
            host_ids=torch.empty(dims, dtype=torch.long, pin_memory=True),
            host_mask=torch.empty(dims, dtype=torch.long, pin_memory=True),
            host_out=torch.empty((shape.batch, self.dim), dtype=torch.float32, pin_memory=True),
        )  # fmt: skip

    def warmup(self) -> None:
        """Capture every shape, largest first so the shared memory pool is sized once."""
        for shape in sorted(self.shapes, key=lambda s: s.tokens, reverse=True):
            if shape not in self._graphs:
                self._graphs[shape] = self._capture(shape)
        self._torch.cuda.synchronize(self.device)
        log.info("torch cuda graphs: %d shapes captured", self.captures)

    def run(self, batch: Batch) -> np.ndarray:
        g = self._graphs.get(batch.shape)
        if g is None:
            g = self._graphs[batch.shape] = self._capture(batch.shape)
        g.host_ids.numpy()[...] = batch.input_ids
        g.host_mask.numpy()[...] = batch.attention_mask
        g.ids.copy_(g.host_ids, non_blocking=True)
        g.mask.copy_(g.host_mask, non_blocking=True)
        g.graph.replay()
        self.replays += 1
        g.host_out.copy_(g.out, non_blocking=True)
        self._torch.cuda.current_stream(self.device).synchronize()
        return g.host_out.numpy().copy()

    def close(self) -> None:
        self._graphs.clear()
