"""The ONNX artifact of a bundle: export, then the graph variant for the device and precision.

- cpu fp32: the plain exported graph (ORT's own session-level optimizations still apply); on a
  small CPU the transformer optimizer's fused graph measured slower (BENCHMARKS.md).
- cuda fp32 / fp16: fused attention from ORT's transformer optimizer for the architecture ("bert"
  covers BERT, RoBERTa, XLM-R, DistilBERT), with its packed twin; fp16 keeps float32
  inputs/outputs.  ModernBERT, which ORT does not fuse, keeps the exported graph (fp16 if asked,
  its rotary angles fp32) and its twin is vecq's own padding-free export (`unpadded_modernbert.py`).
- cpu int8: dynamic int8 (per-channel 7-bit weights) of the MatMuls, each with the [CLS] row
  quantized apart from the other tokens (`export.split_cls`); the MatMuls whose quantization
  costs the most cosine (measured per model, at build time) stay fp32, as few as parity allows.
  Plain all-int8 moves short texts' vectors to cosine ~0.97 on all-MiniLM-L6-v2 and the loss is
  spread over many MatMuls, so no fixed rule ("skip the first layer", "only the FFN") was
  enough; with the [CLS] row apart, 4 of 36 stay fp32 instead of 14 (BENCHMARKS.md).

Parity runs the candidate through `OnnxEngine` and vecq's own shape planner and padding, so it
checks exactly what a worker will run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batching import embed_texts
from .bundle import PACKED_FILE
from .export import CLS_SUFFIX, export_onnx, fuses, optimize, quantize_int8, split_cls, weight_sizes
from .parity import ParityReport, calibration_texts, compare, reference_vectors
from .shapes import ShapeSet
from .spec import ModelSpec
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxArtifact:
    """The chosen `model.onnx` variant and its parity (the worse of it and its packed twin)."""

    graph: str
    fp32_nodes: list[str]
    report: ParityReport
    extra_files: tuple[str, ...] = ()


def build_onnx(
    module,
    bundle: Path,
    *,
    spec: ModelSpec,
    shapes: ShapeSet,
    tokenizer: TextTokenizer,
    device: str,
    precision: str,
    texts: Sequence[str],
    reference: np.ndarray,
    say: Callable[[str], None],
) -> OnnxArtifact:
    """Write `bundle/model.onnx` for `device`/`precision` and return how it was made and its parity."""
    work = bundle / ".work"
    work.mkdir()
    try:
        say("exporting to ONNX (dynamic batch and sequence axes)")
        exported = export_onnx(module, work / "exported.onnx")

        def parity(path: Path, packed: bool = False) -> ParityReport:
            return _parity(path, spec, shapes, tokenizer, device, precision, texts, reference, packed=packed)

        if precision == "int8":
            calibration = calibration_texts()
            calibration_ref = reference_vectors(module, tokenizer, calibration)

            def calibrate(path: Path) -> float:
                report = _parity(
                    path, spec, shapes, tokenizer, device, precision, calibration, calibration_ref
                )
                return report.min_cosine

            artifact, chosen = _int8(exported, work, parity, calibrate, say)
        elif device == "cpu":
            artifact, chosen = OnnxArtifact("exported", [], parity(exported)), exported
        else:
            artifact, chosen = _cuda_graph(module, exported, work, bundle, spec, precision, say, parity)
        shutil.move(str(chosen), bundle / "model.onnx")
        return artifact
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cuda_graph(module, exported, work, bundle, spec, precision, say, parity) -> tuple[OnnxArtifact, Path]:
    """A CUDA bundle's graph and its padding-free twin: fused by ORT's optimizer for the
    architecture and converted to ORT's packing mode; for ModernBERT, which ORT does not fuse, the
    exported graph (fp16 if asked) and vecq's own unpadded export."""
    config = module.encoder.config
    kind = config.model_type
    fused = fuses(kind)
    graph = ("fused" if fused else "unfused") + ("+fp16" if precision == "fp16" else "")
    say(f"optimizing for CUDA ({graph}; ORT's optimizer {'for ' + kind if fused else 'has no ' + kind})")

    def optimized(src: Path, dst: Path) -> Path:
        return optimize(
            src, dst, spec=spec, num_heads=int(config.num_attention_heads), fp16=precision == "fp16",
            use_gpu=True, model_type=kind,
        )  # fmt: skip

    chosen = optimized(exported, work / "fused.onnx")
    artifact = OnnxArtifact(graph, [], parity(chosen))
    if fused:
        twin, label = _packing_mode(chosen, work, say), "packed"
    elif kind == "modernbert":
        from .unpadded_modernbert import unpadded_twin

        say("exporting ModernBERT's padding-free twin (its linear layers over the real tokens only)")
        twin, label = (
            optimized(
                export_onnx(unpadded_twin(module), work / "unpadded.onnx", contrib_ops=True),
                work / PACKED_FILE,
            ),
            "unpadded",
        )
    else:
        return artifact, chosen
    return _with_twin(artifact, twin, label, bundle, say, parity), chosen


def _packing_mode(fused: Path, work: Path, say) -> Path:
    """ORT's packing mode of the fused graph: RemovePadding → PackedAttention → RestorePadding."""
    import onnx
    from onnxruntime.transformers.convert_to_packing_mode import PackingMode
    from onnxruntime.transformers.onnx_model import OnnxModel

    say("converting the fused graph to packing mode (padding removed inside the graph)")
    model = OnnxModel(onnx.load(str(fused)))
    PackingMode(model).convert()
    packed = work / PACKED_FILE
    model.save_model_to_file(str(packed))
    return packed


def _with_twin(artifact: OnnxArtifact, twin: Path, label: str, bundle: Path, say, parity) -> OnnxArtifact:
    """CUDA bundles also carry a padding-free twin of the main graph, which serves large batches
    at the speed of their real tokens.  It is parity-checked like the main graph, the way a worker
    runs it; the bundle's report is the worse of the two."""
    report = parity(twin, packed=True)
    say(f"{label} graph parity: min cosine {report.min_cosine:.6f}")
    shutil.move(str(twin), bundle / PACKED_FILE)
    worse = report if report.min_cosine < artifact.report.min_cosine else artifact.report
    return OnnxArtifact(f"{artifact.graph} + {label}", [], worse, extra_files=(PACKED_FILE,))


def int8_ladder(ranked: Sequence[str], *, step: int) -> list[list[str]]:
    """Candidate sets of MatMuls kept in fp32: none, then the `step`, 2×`step`... most sensitive."""
    return [list(ranked[:k]) for k in range(0, len(ranked) + 1, step)]


def _int8(exported: Path, work: Path, parity, calibrate, say) -> tuple[OnnxArtifact, Path]:
    """Quantize every weight MatMul with the [CLS] row apart (`split_cls`) and 7-bit weights, and
    while parity fails keep more of the most sensitive in fp32.

    Sensitivity is measured on calibration texts distinct from the parity texts (each MatMul
    quantized alone, cosine lost), so the final parity check is not the set that chose the nodes.
    """
    split = work / "split.onnx"
    nodes = split_cls(exported, split)
    pairs = {n: [n, n + CLS_SUFFIX] for n in nodes}
    every = [m for pair in pairs.values() for m in pair]
    say(f"int8: measuring the sensitivity of {len(nodes)} MatMuls (each quantized alone)")
    loss, sizes = {}, weight_sizes(exported)
    for node in nodes:
        probe = work / "probe.onnx"
        quantize_int8(split, probe, exclude=[m for m in every if m not in pairs[node]], reduce_range=True)
        loss[node] = 1.0 - calibrate(probe)
    # Keep in fp32 first what loses the most cosine per weight (≈ per FLOP) quantized.
    ranked = sorted(nodes, key=lambda n: loss[n] / sizes.get(n, 1), reverse=True)
    best: tuple[OnnxArtifact, Path] | None = None
    for k, keep in enumerate(int8_ladder(ranked, step=max(1, len(nodes) // 18))):
        label = f"int8 ({len(nodes) - len(keep)}/{len(nodes)} MatMul, [CLS] row apart, 7-bit weights)"
        path = quantize_int8(
            split, work / f"int8-{k}.onnx", exclude=[m for n in keep for m in pairs[n]], reduce_range=True
        )
        report = parity(path)
        say(f"{label}: parity min cosine {report.min_cosine:.6f} (text {report.worst_index})")
        artifact = OnnxArtifact(label, sorted(keep), report)
        if report.passed:
            return artifact, path
        if best is None or report.min_cosine > best[0].report.min_cosine:
            best = artifact, path
    assert best is not None, "the int8 ladder is never empty (vecq bug)"
    return best  # fails `require` in the caller, with the best cosine reached


def _parity(
    path, spec, shapes, tokenizer, device, precision, texts, reference, *, packed=False
) -> ParityReport:
    from .backends.onnx import OnnxEngine

    if packed:  # PackedAttention is a CUDA-only contrib op: run it the way a worker will
        from .backends.onnx_cuda import OnnxCudaEngine

        engine = OnnxCudaEngine(path, shapes=shapes, dim=spec.dim, graphs=False)
    else:
        engine = OnnxEngine(path, shapes=shapes, dim=spec.dim, device="cpu" if device == "cpu" else "cuda")
    try:
        return compare(embed_texts(tokenizer, engine, texts), reference, precision=precision)
    finally:
        engine.close()
