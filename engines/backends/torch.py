"""PyTorch backend: the pooled encoder run eagerly under `torch.inference_mode`, CPU or CUDA.

The reference every other backend is checked against, and a fair engine in its own right.  On
CUDA it can run in fp16 or bf16 (vectors always come back float32); per-shape CUDA graphs live in
`torch_graphs.py` and wrap the same module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Batch
from ..errors import ShapeError, UnknownBackend
from ..shapes import ShapeSet
from ..spec import ModelSpec

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")


class TorchEngine:
    """Runs `PooledEncoder(input_ids, attention_mask)` on one device."""

    def __init__(self, module: Any, *, shapes: ShapeSet, dim: int, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.module = module
        self.shapes = shapes
        self.dim = dim
        self.device = torch.device(device)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        spec: ModelSpec,
        shapes: ShapeSet,
        device: str = "cpu",
        precision: str = "fp32",
        **_: Any,
    ) -> TorchEngine:
        """Load the model dir's encoder with `spec`'s pooling head onto `device`.

        fp16/bf16 are offered on CUDA only: on CPU they are slower than fp32 and less exact.
        """
        import torch

        from ..pooled import load_pooled

        if precision not in PRECISIONS:
            raise UnknownBackend(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} for torch")
        if precision != "fp32" and not device.startswith("cuda"):
            raise UnknownBackend(f"precision {precision!r} needs a CUDA device (got {device!r})")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UnknownBackend(f"device {device!r}: this torch has no CUDA")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        module = load_pooled(model_dir, spec, attn_implementation="sdpa", dtype=dtype).to(device)
        log.info("torch engine: %s on %s (%s)", spec.name, device, precision)
        return cls(module, shapes=shapes, dim=spec.dim, device=device)

    def warmup(self) -> None:
        """One run of the smallest and the largest shape (no per-shape state to build in eager)."""
        ordered = sorted(self.shapes, key=lambda s: s.tokens)
        for shape in {ordered[0], ordered[-1]}:
            ids = np.zeros((shape.batch, shape.seq_len), dtype=np.int64)
            self.run(Batch(input_ids=ids, attention_mask=np.ones_like(ids), rows=shape.batch))

    def run(self, batch: Batch) -> np.ndarray:
        if batch.shape not in self.shapes:
            raise ShapeError(f"batch shape {batch.shape} is not one of the engine's shapes (vecq bug)")
        torch = self._torch
        ids = torch.from_numpy(np.ascontiguousarray(batch.input_ids, dtype=np.int64)).to(self.device)
        mask = torch.from_numpy(np.ascontiguousarray(batch.attention_mask, dtype=np.int64)).to(self.device)
        with torch.inference_mode():
            out = self.module(ids, mask)
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
