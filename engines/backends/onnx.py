"""ONNX Runtime backend over a bundle's `model.onnx`, on CPU, CUDA or TensorRT execution providers.

The graph takes `input_ids` and `attention_mask` (int64, dynamic batch and length) and returns one
(B, dim) output with pooling and normalization already applied.  fp16 graphs built with
`keep_io_types` still return float32, but a cast is kept for graphs that do not.
The provider list follows the seed write-up: CUDA (or TensorRT, then CUDA) first, CPU as the
fallback ORT uses for any node the first provider cannot run.  On CUDA a bundle is served by the
fixed-shape engines of `onnx_cuda.py` (CUDA graphs, the packed twin) unless another provider list
is asked for.  ONNX engines run from bundles only: a model dir is built into a cached one first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Batch, Engine
from ..errors import ShapeError, UnknownBackend
from ..shapes import ShapeSet

if TYPE_CHECKING:
    from ..bundle import Manifest

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
ProviderList = list[str | tuple[str, dict[str, str]]]
#: Whether ORT's CPU pool threads busy-wait between operators.  Spinning saves a wake-up per
#: operator, but on a small CPU it takes the cores the worker's own threads (taking, tokenizing,
#: writing back) and the embedded server need while a batch runs.
CPU_SPINNING = False
#: What `vecq build --backend onnx` makes per device (int8: CPU only; fp16: CUDA only).
PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")}


def physical_cores() -> int:
    """Physical cores this process may use (not hyper-threads): ORT's intra-op threads beyond
    that only contend with each other."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            cores.add(("", str(cpu)))
    return max(1, len(cores) or os.cpu_count() or 1)


def trt_profile_options(shapes: ShapeSet) -> dict[str, str]:
    """ORT TensorRT EP options with one optimization profile per declared shape.

    The seed write-up saw TensorRT re-tune whenever the batch size changed: ORT's TRT EP builds an
    engine for the shapes it meets unless told the profiles up front.  Listing every bundle shape
    as its own profile (min = opt = max; ORT takes repeated input names as further profiles) means
    the one build at warmup covers every batch the planner can send.
    """

    dims = ",".join(f"{name}:{s.batch}x{s.seq_len}" for s in shapes for name in INPUTS)
    return {"trt_profile_min_shapes": dims, "trt_profile_opt_shapes": dims, "trt_profile_max_shapes": dims}


def providers_for(
    device: str,
    providers: str | None = None,
    *,
    shapes: ShapeSet | None = None,
    cache_dir: Path | None = None,
) -> ProviderList:
    """ORT's provider list for `device` ("cpu", "cuda", "cuda:N"); `providers="tensorrt"` puts
    TensorRT before CUDA, as the write-up did, with a profile per shape and its engine and timing
    caches in `cache_dir` (the bundle's), so a restart does not rebuild."""
    if device == "cpu":
        if providers not in (None, "cpu"):
            raise UnknownBackend(f"providers {providers!r} need a CUDA device (got device 'cpu')")
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise UnknownBackend(f"device {device!r} is not cpu, cuda or cuda:N")
    device_id = device.partition(":")[2] or "0"
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if providers in (None, "cuda"):
        return [cuda, "CPUExecutionProvider"]
    if providers == "tensorrt":
        options = {"device_id": device_id, "trt_fp16_enable": "True"}
        if shapes is not None:
            options |= trt_profile_options(shapes)
        if cache_dir is not None:
            options |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache_dir),
            }
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]
    raise UnknownBackend(f"providers {providers!r} is not one of cpu, cuda, tensorrt")


class OnnxEngine:
    """One ORT `InferenceSession` serving every declared shape (ORT needs no per-shape state)."""

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        shapes: ShapeSet,
        dim: int,
        device: str = "cpu",
        providers: str | None = None,
        threads: int | None = None,
        spinning: bool | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        wanted = providers_for(device, providers, shapes=shapes, cache_dir=cache_dir)
        available = set(ort.get_available_providers())
        first = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
        if first not in available:
            raise UnknownBackend(f"onnxruntime here has no {first} (install onnxruntime-gpu for CUDA)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cpu":
            opts.intra_op_num_threads = threads or physical_cores()
            if not (CPU_SPINNING if spinning is None else spinning):
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        else:  # on a GPU only shape nodes run on the CPU (see OnnxCudaEngine)
            opts.intra_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # fp16 graphs warn about every CPU-placed cast otherwise
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=wanted)
        self.shapes = shapes
        self.dim = dim
        self.device = device
        self._output = self.session.get_outputs()[0].name
        log.info("onnx engine: %s on %s", Path(onnx_path).name, self.session.get_providers()[0])

    def warmup(self) -> None:
        """One run of the smallest and, on a GPU, the largest shape (sizes ORT's arenas up front).

        On CPU the largest shape (8 x 256) cost ~1 s of every `vecq embed` start-up on a 2-core
        machine, ~5% of a few-thousand-text run, for an arena the first long batch sizes anyway.
        """
        ordered = sorted(self.shapes, key=lambda s: s.tokens)
        for shape in {ordered[0], ordered[0] if self.device == "cpu" else ordered[-1]}:
            ids = np.zeros((shape.batch, shape.seq_len), dtype=np.int64)
            self.run(Batch(input_ids=ids, attention_mask=np.ones_like(ids), rows=shape.batch))

    def run(self, batch: Batch) -> np.ndarray:
        if batch.shape not in self.shapes:
            raise ShapeError(f"batch shape {batch.shape} is not one of the engine's shapes (vecq bug)")
        feed: dict[str, Any] = {
            "input_ids": np.ascontiguousarray(batch.input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(batch.attention_mask, dtype=np.int64),
        }
        (out,) = self.session.run([self._output], feed)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def for_bundle(
    root: Path,
    manifest: Manifest,
    *,
    device: str,
    providers: str | None = None,
    threads: int | None = None,
    spinning: bool | None = None,
    graphs: bool = True,
    packed_from_batch: int | None = None,
) -> Engine:
    """The bundle's `model.onnx` on `device`: on CUDA with the CUDA provider, fixed-shape engines
    with graphs (and the packed twin from `packed_from_batch` rows); else one plain session."""
    manifest.require_backend(root, "onnx")
    if device.startswith("cuda") and providers in (None, "cuda"):
        from .onnx_cuda import fixed_shape_engine

        return fixed_shape_engine(root, manifest, device, graphs=graphs, packed_from_batch=packed_from_batch)
    return OnnxEngine(
        root / "model.onnx", shapes=manifest.shape_set, dim=manifest.dim, device=device,
        providers=providers, threads=threads, spinning=spinning, cache_dir=root / "trt-cache",
    )  # fmt: skip
