"""PyTorch backend: the pooled encoder run eagerly under `torch.inference_mode`, CPU or CUDA.

The reference every other backend is checked against, and a fair engine in its own right.  On
CUDA it can run in fp16 or bf16 (vectors always come back float32) and is served through one
captured CUDA graph per shape (`torch_graphs.py`, wrapping the same module) unless `graphs=False`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Batch, Engine
from ..errors import ShapeError, UnknownBackend
from ..shapes import ShapeSet, default_shapes
from ..spec import ModelSpec

if TYPE_CHECKING:
    from ..bundle import Manifest

log = logging.getLogger(__name__)

PRECISIONS_ANYWHERE = ("fp32", "fp16", "bf16")
#: What `vecq build --backend torch` makes per device (it copies the safetensors weights).
PRECISIONS = {"cpu": ("fp32",), "cuda": PRECISIONS_ANYWHERE}


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

        if precision not in PRECISIONS_ANYWHERE:
            raise UnknownBackend(
                f"precision {precision!r} is not one of {', '.join(PRECISIONS_ANYWHERE)} for torch"
            )
        if precision != "fp32" and not device.startswith("cuda"):
            raise UnknownBackend(f"precision {precision!r} needs a CUDA device (got {device!r})")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UnknownBackend(f"device {device!r}: this torch has no CUDA")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        module = load_pooled(model_dir, spec, attn_implementation="sdpa", dtype=dtype).to(device)
        log.info("torch engine: %s on %s (%s)", spec.name, device, precision)
        return cls(module, shapes=shapes, dim=spec.dim, device=device)

    def warmup(self) -> None:
        """One run of the smallest and, on a GPU, the largest shape (no per-shape state to build
        in eager).  On CPU the largest is skipped, as ORT's engine does: for a model of 8,192
        tokens it is a long run that only sizes memory the first long batch sizes anyway."""
        ordered = sorted(self.shapes, key=lambda s: s.tokens)
        for shape in {ordered[0], ordered[0] if self.device.type == "cpu" else ordered[-1]}:
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


def for_model_dir(
    model_dir: Path,
    *,
    spec: ModelSpec,
    shapes: ShapeSet | None,
    device: str,
    precision: str = "fp32",
    graphs: bool = True,
    packed: bool = True,
    threads: int | None = None,
    **_: Any,
) -> Engine:
    _set_threads(device, threads)
    engine = TorchEngine.from_model_dir(
        model_dir, spec=spec, shapes=shapes or default_shapes(spec.max_seq_len, device),
        device=device, precision=precision,
    )  # fmt: skip
    return _served(engine, graphs=graphs, packed=packed, shapes=shapes)


def for_bundle(
    root: Path, manifest: Manifest, *, device: str, graphs: bool = True, packed: bool = True,
    threads: int | None = None, **_: Any,
) -> Engine:  # fmt: skip
    manifest.require_backend(root, "torch")
    _set_threads(device, threads)
    engine = TorchEngine.from_model_dir(
        root, spec=manifest.spec, shapes=manifest.shape_set, device=device, precision=manifest.precision
    )
    return _served(engine, graphs=graphs, packed=packed, shapes=manifest.shape_set)


def served_shapes(model_dir: Path, spec: ModelSpec, device: str) -> ShapeSet:
    """The shapes a torch engine serves by default: packed ones where the packed encoder runs the
    model on CUDA (they cost nothing to declare), else the device's grid."""
    if device.startswith("cuda"):
        from transformers import AutoConfig

        from ..packed_encoder import supports

        if supports(AutoConfig.from_pretrained(str(model_dir))) is None:
            from .torch_packed import packed_shapes

            return packed_shapes(spec.max_seq_len)
    return default_shapes(spec.max_seq_len, device)


def _set_threads(device: str, threads: int | None) -> None:
    if threads is not None and device == "cpu":
        import torch

        torch.set_num_threads(threads)  # torch's pool is the process's: the worker owns it


def _served(engine: TorchEngine, *, graphs: bool, packed: bool, shapes: ShapeSet | None) -> Engine:
    """On CUDA: the padding-free packed engine where the model allows it, else one captured graph
    per shape (eager launches cost more than small batches run); as is on CPU or without graphs."""
    if engine.device.type != "cuda" or not graphs:
        return engine
    from ..packed_encoder import packed_module, supports

    encoder = engine.module.encoder
    why = supports(encoder.config)
    if packed and why is None:
        from .torch_packed import PackedGraphEngine, packed_shapes

        module = packed_module(encoder, pooling=engine.module.pooling, normalize=engine.module.normalize)
        chosen = shapes or packed_shapes(max(s.seq_len for s in engine.shapes))
        return PackedGraphEngine(module, shapes=chosen, dim=engine.dim, device=str(engine.device))
    if packed:
        log.info("torch: not packed (%s); one graph per shape", why)
    from .torch_graphs import TorchGraphEngine

    return TorchGraphEngine(engine.module, shapes=engine.shapes, dim=engine.dim, device=str(engine.device))
