"""Native TensorRT: one plan with one optimization profile per declared shape.

The seed write-up found that TensorRT re-tunes whenever the batch size changes.  vecq builds a
profile for each (batch, seq_len) the bundle declares (min = opt = max, so every kernel is tuned
for exactly that shape), picks the profile of each batch's shape at run time, and never meets a
shape it was not built for.  The plan and the timing cache live in the bundle; the plan is rebuilt
only when the GPU, the TensorRT version or the shapes change (`PlanKey`).

What ran where (see BENCHMARKS.md): native TensorRT cannot be installed in vecq's sandboxes, so
the runtime path is written to TensorRT 10's documented Python API and type-checked against
`tensorrt-stubs`; profile selection and plan keys are unit-tested without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Batch
from ..errors import ShapeError, UnknownBackend
from ..shapes import Shape, ShapeSet

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")


def profile_indices(shapes: ShapeSet) -> dict[Shape, int]:
    """Profile k of the plan is the k-th shape in the set's sorted order (build and run agree)."""
    return {shape: k for k, shape in enumerate(shapes)}


@dataclass(frozen=True)
class PlanKey:
    """What a plan depends on besides the ONNX file: a different key means rebuild."""

    gpu: str  # device name
    compute_capability: str  # e.g. "9.0"
    tensorrt: str  # TensorRT version
    shapes: str  # sha256 of the shape list
    precision: str
    onnx_sha256: str

    @classmethod
    def of(
        cls,
        *,
        gpu: str,
        compute_capability: str,
        tensorrt: str,
        shapes: ShapeSet,
        precision: str,
        onnx_sha256: str,
    ) -> PlanKey:
        digest = hashlib.sha256(json.dumps(shapes.to_list()).encode()).hexdigest()[:16]
        return cls(gpu, compute_capability, tensorrt, digest, precision, onnx_sha256)

    def matches(self, file: Path) -> bool:
        """Whether the key stored beside a plan equals this one."""
        try:
            return json.loads(file.read_text()) == asdict(self)
        except (OSError, ValueError):
            return False

    def write(self, file: Path) -> None:
        file.write_text(json.dumps(asdict(self), indent=2))


def _require_trt() -> None:
    """One clear line when TensorRT is absent — or present only as type stubs, which import as an
    empty namespace package."""
    try:
        import tensorrt

        usable = hasattr(tensorrt, "Builder")
    except ImportError:
        usable = False
    if not usable:
        raise UnknownBackend("backend 'tensorrt' needs NVIDIA TensorRT 10 (pip install 'vecq[tensorrt]')")


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    shapes: ShapeSet,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    workspace_gib: int = 8,
) -> None:
    """Parse the bundle's ONNX file and serialize a plan with one profile per shape."""
    _require_trt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnknownBackend(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    flag = {"fp16": "FP16", "bf16": "BF16"}.get(precision)
    if flag and hasattr(trt.BuilderFlag, flag):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    elif flag:  # TensorRT-RTX dropped the weak-typing flags: precision follows the graph's types
        log.info("tensorrt: no BuilderFlag.%s here; precision follows the ONNX graph", flag)
    has_cache = hasattr(config, "create_timing_cache")
    if has_cache:
        seed = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(seed), ignore_mismatch=False)
    for shape in profile_indices(shapes):
        _add_profile(builder, config, shape)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnknownBackend(f"TensorRT failed to build a plan from {onnx_path.name} (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None and has_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("tensorrt: built %s with %d profiles", plan_path.name, len(shapes))


def _add_profile(builder: trt.Builder, config: trt.IBuilderConfig, shape: Shape) -> None:
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    dims = trt.Dims2(shape.batch, shape.seq_len)
    for name in INPUTS:
        profile.set_shape(name, dims, dims, dims)
    config.add_optimization_profile(profile)


class TensorRTEngine:
    """Runs a plan built by `build_plan`: one execution context per profile, one shared scratch
    buffer (contexts never run concurrently), device I/O buffers per shape."""

    def __init__(self, plan_path: Path, *, shapes: ShapeSet, dim: int, device: str = "cuda:0") -> None:
        import torch

        _require_trt()
        import tensorrt as trt

        self._torch = torch
        self.shapes, self.dim = shapes, dim
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise UnknownBackend(
                f"{plan_path.name}: TensorRT could not load the plan (other GPU or version?)"
            )
        if self._engine.num_optimization_profiles != len(shapes):
            raise ShapeError(
                f"{plan_path.name} has {self._engine.num_optimization_profiles} profiles, "
                f"the bundle declares {len(shapes)} shapes: rebuild it"
            )
        self._profiles = profile_indices(shapes)
        self._output = next(n for n in _io_names(self._engine) if n not in INPUTS)
        self._scratch = torch.empty(self._engine.device_memory_size_v2, dtype=torch.uint8, device=self.device)
        self._stream = torch.cuda.Stream(device=self.device)
        self._contexts: dict[Shape, Any] = {}
        self._buffers: dict[Shape, dict[str, Any]] = {}  # device tensors bound to each context

    def _context(self, shape: Shape) -> Any:
        ctx = self._contexts.get(shape)
        if ctx is not None:
            return ctx
        if shape not in self._profiles:
            raise ShapeError(f"batch shape {shape} is not one of the engine's shapes (vecq bug)")
        torch = self._torch
        ctx = self._engine.create_execution_context_without_device_memory()
        ctx.set_optimization_profile_async(self._profiles[shape], self._stream.cuda_stream)
        dims = (shape.batch, shape.seq_len)
        buffers = {n: torch.zeros(dims, dtype=torch.long, device=self.device) for n in INPUTS}
        buffers[self._output] = torch.empty((shape.batch, self.dim), dtype=torch.float32, device=self.device)
        for name in INPUTS:
            ctx.set_input_shape(name, dims)
        for name, tensor in buffers.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        self._buffers[shape] = buffers
        self._contexts[shape] = ctx
        return ctx

    def warmup(self) -> None:
        for shape in self.shapes:
            self._execute(self._context(shape))
        self._stream.synchronize()

    def _execute(self, ctx: Any) -> None:
        ctx.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")

    def run(self, batch: Batch) -> np.ndarray:
        ctx = self._context(batch.shape)
        buffers = self._buffers[batch.shape]  # bound to ctx by _context
        torch = self._torch
        with torch.cuda.stream(self._stream):
            buffers["input_ids"].copy_(torch.from_numpy(batch.input_ids), non_blocking=True)
            buffers["attention_mask"].copy_(torch.from_numpy(batch.attention_mask), non_blocking=True)
            self._execute(ctx)
            out = buffers[self._output].cpu()
        return out.numpy()

    def close(self) -> None:
        self._contexts.clear()
        self._buffers.clear()


def _io_names(engine: trt.ICudaEngine) -> list[str]:
    return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
