"""ONNX Runtime on CUDA with one captured CUDA graph per declared shape.

Every shape gets its own device buffers (inputs and output) bound once through IOBinding and its
own `gpu_graph_id`; warmup runs each shape until ORT has captured it, after which a batch costs a
host→device copy into the shape's input buffers, one graph replay and a device→host copy of the
(batch, dim) vectors — no kernel launches from Python, no allocation, no re-capture.

A packed-mode model (ORT's RemovePadding → PackedAttention → RestorePadding) cannot be captured:
its internal sizes follow the real token count.  `OnnxCudaEngine(graphs=False)` serves it with
the same bound buffers and plain runs.

A graph whose shape arithmetic ORT places on the CPU EP (ModernBERT's rotary positions and
window mask: Shape, Range, Gather on dynamic sizes) is refused capture.  With `batch` and
`sequence` fixed by free-dimension overrides all of that arithmetic folds into constants, so such
a model gets one session per shape instead, every session reading the same weights on the GPU
(`SharedWeights`): graphs at the cost of a session per shape, not of the weights per shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Batch, Engine
from ..bundle import PACKED_FILE
from ..errors import ShapeError, UnknownBackend
from ..shapes import Shape, ShapeSet

if TYPE_CHECKING:
    from ..bundle import Manifest

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")


@dataclass
class _Slot:
    """The bound buffers (and graph id) of one shape."""

    session: Any  # the engine's one session, or the shape's own
    binding: Any
    inputs: dict[str, Any]
    output: Any
    graph_id: int
    runs: int = 0


#: The run on which ORT's CUDA EP captures a shape's graph: it first does
#: `min_num_runs_before_cuda_graph_capture_` (2 in current releases, 1 in older ones) regular
#: runs to size its memory arena, so warming a shape takes three runs (a third is a replay where
#: the capture came on the second).
CAPTURE_RUN = 3
#: Batches of at least this many rows go to the packed twin (BENCHMARKS.md, H100 engine table).
PACKED_FROM_BATCH = 32


class OnnxCudaEngine:
    """Fixed-shape ORT CUDA engine; `graphs=True` captures one CUDA graph per shape."""

    def __init__(
        self, onnx_path: str | Path, *, shapes: ShapeSet, dim: int, device_id: int = 0, graphs: bool = True
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UnknownBackend(
                "backend 'onnx' on CUDA needs onnxruntime-gpu (pip install 'vecq[gpu]')"
            ) from None
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UnknownBackend("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
        self._ort = ort
        self.shapes, self.dim, self.device_id, self.graphs = shapes, dim, device_id, graphs
        cuda = {
            "device_id": str(device_id),
            "enable_cuda_graph": "1" if graphs else "0",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
        self._providers = [("CUDAExecutionProvider", cuda)]
        self._path = str(onnx_path)
        self._weights: SharedWeights | None = None
        self._sessions: dict[Shape, Any] = {}  # per-shape sessions (weights shared), if any
        try:
            self.session = ort.InferenceSession(
                self._path, sess_options=session_options(ort), providers=self._providers
            )
        except Exception as exc:  # ORT raises its own Fail; only the graph-capture refusal is ours
            if not graphs or "graph capture" not in str(exc):
                raise
            self.session = self._per_shape_or_plain(onnx_path)
        self._output_name = self.session.get_outputs()[0].name
        self._slots: dict[Shape, _Slot] = {}
        self.captures = 0  # shapes captured so far (a test checks each is captured exactly once)
        self.runs = 0  # session runs, warm-up ones included
        self.replays = 0  # runs of a shape after its capture: graph replays

    @property
    def shared_weight_bytes(self) -> int:
        """Bytes of weights its per-shape sessions share (0: one session for every shape)."""
        return self._weights.nbytes if self._weights else 0

    def _slot(self, shape: Shape) -> _Slot:
        slot = self._slots.get(shape)
        if slot is not None:
            return slot
        if shape not in self.shapes:
            raise ShapeError(f"batch shape {shape} is not one of the engine's shapes (vecq bug)")
        ov = self._ort.OrtValue
        inputs = {
            n: ov.ortvalue_from_shape_and_type([shape.batch, shape.seq_len], np.int64, "cuda", self.device_id)
            for n in INPUTS
        }
        output = ov.ortvalue_from_shape_and_type([shape.batch, self.dim], np.float32, "cuda", self.device_id)
        session = self.session
        if self._weights is not None:  # one session per shape
            session = self._sessions.get(shape) or self._shape_session(shape)
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(self._output_name, output)
        slot = _Slot(session, binding, inputs, output, graph_id=len(self._slots) + 1)
        self._slots[shape] = slot
        return slot

    def _run(self, slot: _Slot) -> None:
        ro = self._ort.RunOptions()
        ro.add_run_config_entry("gpu_graph_id", str(slot.graph_id) if self.graphs else "-1")
        slot.session.run_with_iobinding(slot.binding, ro)
        slot.runs += 1
        self.runs += 1
        if self.graphs and slot.runs == CAPTURE_RUN:
            self.captures += 1
        elif self.graphs and slot.runs > CAPTURE_RUN:
            self.replays += 1

    def warmup(self) -> None:
        """Make every shape ready: ORT runs a shape's first calls plainly and captures on a later one.

        Call it from the thread that will run the batches: ORT keeps graphs per thread.
        """
        for shape in self.shapes:
            self.warm(shape)
        log.info(
            "onnx cuda: %d shapes ready (%s)", len(self.shapes), "graphs" if self.graphs else "no graphs"
        )

    def warm(self, shape: Shape) -> None:
        slot = self._slot(shape)
        ids = np.full((shape.batch, shape.seq_len), 100, dtype=np.int64)
        slot.inputs["input_ids"].update_inplace(ids)
        slot.inputs["attention_mask"].update_inplace(np.ones_like(ids))
        while slot.runs < (CAPTURE_RUN if self.graphs else 1):
            self._run(slot)

    def run(self, batch: Batch) -> np.ndarray:
        slot = self._slot(batch.shape)
        slot.inputs["input_ids"].update_inplace(np.ascontiguousarray(batch.input_ids, dtype=np.int64))
        slot.inputs["attention_mask"].update_inplace(
            np.ascontiguousarray(batch.attention_mask, dtype=np.int64)
        )
        self._run(slot)
        return slot.output.numpy()

    def _per_shape_or_plain(self, onnx_path: str | Path) -> Any:
        """A capture-refused model: one session per shape if the smallest shape's session can
        capture (its first session is returned); otherwise one session without graphs."""
        ort = self._ort
        self._weights = SharedWeights(ort, onnx_path, device_id=self.device_id)
        # Arenas grown by what is asked, not to the next power of two: with six ModernBERT-base
        # shapes 3.4 GiB instead of 4.3 on the H200 (BENCHMARKS.md); graphs fix the sizes anyway.
        grow = {"arena_extend_strategy": "kSameAsRequested"}
        self._providers = [(name, {**o, **grow}) for name, o in self._providers]
        first = min(self.shapes, key=lambda s: (s.tokens, s.batch))
        try:
            session = self._shape_session(first)
        except Exception as exc:
            if "graph capture" not in str(exc):
                raise
            log.warning("onnx cuda: %s has nodes off the CUDA EP; served without CUDA graphs", onnx_path)
            self._weights, self._sessions, self.graphs = None, {}, False
            plain = [("CUDAExecutionProvider", {**self._providers[0][1], "enable_cuda_graph": "0"})]
            return ort.InferenceSession(self._path, sess_options=session_options(ort), providers=plain)
        shared = self._weights
        log.info(
            "onnx cuda: %s: dynamic shape arithmetic runs on the CPU EP, so one session per shape "
            "(%d weights shared, %.0f MiB)", onnx_path, len(shared.views), shared.nbytes / 2**20,
        )  # fmt: skip
        return session

    def _shape_session(self, shape: Shape) -> Any:
        assert self._weights is not None
        opts = session_options(self._ort, shape=shape, weights=self._weights)
        session = self._ort.InferenceSession(self._path, sess_options=opts, providers=self._providers)
        self._sessions[shape] = session
        return session

    def close(self) -> None:
        self._slots.clear()
        self._sessions.clear()
        self._weights = None
        self.session = None  # type: ignore[assignment]


def session_options(ort: Any, *, shape: Shape | None = None, weights: SharedWeights | None = None) -> Any:
    """vecq's ORT CUDA session options; `shape` fixes the `batch` and `sequence` axes."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Only a few shape nodes run on the CPU.  ORT's default is a pool of one spinning thread
    # per core, which kept 16 cores busy after every call and made the worker's own host
    # work (tokenizer, copies) 2-4× slower beside it on the H100 machine (BENCHMARKS.md).
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # placement notes on every session otherwise
    if shape is not None:
        opts.add_free_dimension_override_by_name("batch", shape.batch)
        opts.add_free_dimension_override_by_name("sequence", shape.seq_len)
    for name, value in weights.views.items() if weights else ():
        opts.add_initializer(name, value)
    return opts


class SharedWeights:
    """A model's float weights placed once on a device, for many sessions to read.

    ORT takes a shared initializer only in memory it does not own, so each weight is copied to
    the device into an ORT-owned value (`owners`, kept alive here) and handed over as a DLPack
    view of it (`views`).  Integer tensors stay with each session: they are the shape
    arithmetic's, which ORT folds away or reads on the CPU.
    """

    def __init__(self, ort: Any, onnx_path: str | Path, *, device_id: int = 0, device: str = "cuda") -> None:
        import onnx
        from onnx import numpy_helper

        self.owners: dict[str, Any] = {}
        self.views: dict[str, Any] = {}
        self.nbytes = 0
        if not hasattr(ort.OrtValue, "from_dlpack"):  # an older ORT: each session loads its own
            log.warning("onnx cuda: onnxruntime %s cannot share weights; one copy per shape", ort.__version__)
            return
        model = onnx.load(str(onnx_path))
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind != "f":
                continue
            owner = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            self.owners[tensor.name] = owner
            self.views[tensor.name] = ort.OrtValue.from_dlpack(owner._get_c_value().to_dlpack())
            self.nbytes += array.nbytes


class HybridCudaEngine:
    """Graphs for small batches, padding removal for large ones, over one shape set.

    Measured on an H100 (BENCHMARKS.md): per-shape CUDA graphs win by 2× at batch ≤ 8, where
    launch overhead dominates; packed attention wins from batch 32 up on real-length batches
    (2.5× at 256), where compute follows real tokens.  Interactive batches are small and bulk
    batches are large, so routing by batch size gives each lane the faster engine.
    """

    def __init__(
        self, graphs: OnnxCudaEngine, packed: OnnxCudaEngine, *, packed_from_batch: int = PACKED_FROM_BATCH
    ) -> None:
        if graphs.shapes != packed.shapes:
            raise ValueError("graph and packed engines must serve the same shapes")
        self.shapes, self.dim = graphs.shapes, graphs.dim
        self.graphs, self.packed = graphs, packed
        self.packed_from_batch = packed_from_batch

    def _pick(self, shape: Shape) -> OnnxCudaEngine:
        return self.packed if shape.batch >= self.packed_from_batch else self.graphs

    def warmup(self) -> None:
        """Capture graphs only for the shapes routed to them; warm the packed session per shape."""
        for shape in self.shapes:
            self._pick(shape).warm(shape)

    def run(self, batch: Batch) -> np.ndarray:
        return self._pick(batch.shape).run(batch)

    def close(self) -> None:
        self.graphs.close()
        self.packed.close()


def fixed_shape_engine(
    root: Path, manifest: Manifest, device: str, *, graphs: bool, packed_from_batch: int | None
) -> Engine:
    """A CUDA bundle's engine: a CUDA graph per shape, and the packed twin for large batches."""
    shapes, dim = manifest.shape_set, manifest.dim
    device_id = int(device.partition(":")[2] or 0)
    fused = OnnxCudaEngine(root / "model.onnx", shapes=shapes, dim=dim, device_id=device_id, graphs=graphs)
    if PACKED_FILE not in manifest.files:
        return fused
    packed = OnnxCudaEngine(root / PACKED_FILE, shapes=shapes, dim=dim, device_id=device_id, graphs=False)
    return HybridCudaEngine(fused, packed, packed_from_batch=packed_from_batch or PACKED_FROM_BATCH)
