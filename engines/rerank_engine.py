"""The engines that score a cross-encoder's pairs, and which paths hold one.

Below `reranker.py` and `rerank_build.py` alike (both make engines; neither may import the other's
layer, nor the model cache, which `vecq build` sits under): the precision rules of each backend
and device, the engine for a model dir's or a bundle's files, and `is_cross_encoder`.
"""

from __future__ import annotations

from pathlib import Path

from .base import Engine
from .bundle import MANIFEST, read_manifest
from .errors import UnknownBackend, VecqEngineError
from .shapes import ShapeSet, default_shapes
from .spec import ModelSpec, resolve_model

#: The backends a reranker runs on, for now (onnx on the CPU only).
RERANK_BACKENDS = ("torch", "onnx")
#: Precisions on CUDA (torch); the CPU runs fp32.
CUDA_PRECISIONS = ("fp16", "bf16", "fp32")


def is_cross_encoder(path: str | Path) -> bool:
    """Whether a model dir (or a Hugging Face id in the local cache) holds a
    `*ForSequenceClassification`, or a bundle is a reranker's: what a worker serves as a
    reranker (`Reranker.load` then refuses, in one line, one it cannot rerank with)."""
    import json

    try:
        root, _name = resolve_model(path)
        if (root / MANIFEST).is_file():
            return read_manifest(root).task == "rerank"
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, VecqEngineError):
        return False  # not readable here: the embedder's load says why
    if not isinstance(config, dict):
        return False
    kinds = config.get("architectures") or []
    return any(str(k).endswith("ForSequenceClassification") for k in kinds)


def check_choice(backend: str, device: str, precision: str | None) -> str:
    """The precision a reranker runs at on `backend` and `device`, or `UnknownBackend` in one line."""
    if backend not in RERANK_BACKENDS:
        raise UnknownBackend(f"backend {backend!r}: a reranker runs on {', '.join(RERANK_BACKENDS)}")
    cuda = device.startswith("cuda")
    if cuda and backend != "torch":
        raise UnknownBackend(f"backend {backend!r} on {device}: a reranker runs on CUDA with torch")
    if device != "cpu" and not cuda:
        raise UnknownBackend(f"device {device!r}: a reranker runs on cpu or cuda")
    chosen = precision or ("fp16" if cuda else "fp32")
    allowed = CUDA_PRECISIONS if cuda else ("fp32",)
    if chosen not in allowed:
        raise UnknownBackend(f"precision {chosen!r} on {device}: a reranker runs {'/'.join(allowed)} there")
    return chosen


def make_engine(
    root: Path, spec: ModelSpec, activation: str, sep_id: int, *, backend: str, device: str, precision: str,
    shapes: ShapeSet | None, threads: int | None, packed: bool, onnx_path: Path | None = None,
) -> Engine:  # fmt: skip
    """The engine that scores pairs of `root`'s model (a model dir, or a bundle's files):
    packed or graphed torch on CUDA; ONNX Runtime on a bundle's `onnx_path`, or torch, on the CPU."""
    if device.startswith("cuda"):
        return _cuda_engine(root, spec, activation, sep_id, device, precision, shapes, packed=packed)
    shapes = shapes or default_shapes(spec.max_seq_len, device)
    if backend == "onnx":
        from .backends.onnx import OnnxEngine

        if onnx_path is None:
            raise ValueError("an onnx reranker engine needs its model.onnx (vecq bug)")
        return OnnxEngine(onnx_path, shapes=shapes, dim=1, device=device, threads=threads)
    from .backends.torch import TorchEngine, _set_threads
    from .cross_encoder import load_scoring

    _set_threads(device, threads)
    module = load_scoring(root, activation=activation, sep_id=sep_id)
    return TorchEngine(module, shapes=shapes, dim=1, device=device)


def _cuda_engine(
    root: Path, spec: ModelSpec, activation: str, sep_id: int, device: str, precision: str,
    shapes: ShapeSet | None, *, packed: bool,
) -> Engine:  # fmt: skip
    """The packed engine where the packed encoder serves the architecture (`PackedScorer`), else
    one CUDA graph per padded shape; both are captured at `warmup`."""
    import torch

    from .cross_encoder import PackedScorer, load_scoring
    from .packed_encoder import supports

    if not torch.cuda.is_available():
        raise UnknownBackend(f"device {device!r}: this torch has no CUDA")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    module = load_scoring(root, activation=activation, sep_id=sep_id, dtype=dtype).to(device)
    if packed and supports(module.encoder.config) is None:
        from .backends.torch_packed import PackedGraphEngine, packed_shapes

        chosen = shapes or packed_shapes(spec.max_seq_len)
        return PackedGraphEngine(PackedScorer(module), shapes=chosen, dim=1, device=device)
    from .backends.torch_graphs import TorchGraphEngine

    return TorchGraphEngine(
        module, shapes=shapes or default_shapes(spec.max_seq_len, device), dim=1, device=device
    )
