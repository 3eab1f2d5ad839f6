"""Pooled encoder → ONNX file, then ONNX Runtime's transformer optimizer, fp16 or int8.

Each step writes a new file and leaves the previous one alone, so `build.py` can try variants
(fused or not, which nodes stay fp32 in int8) and keep the one that passes parity.  Facts these
steps rest on (DESIGN.md, "Performance notes"):
- the legacy exporter (`dynamo=False`) under `torch.no_grad()` with eager attention gives the
  subgraph ORT's optimizer fuses into one `Attention` node; the SDPA export is never fused;
- on a small CPU the fused graph was no faster, so CPU bundles keep the plain exported graph;
- dynamic int8 of every MatMul is ~2.4× faster on CPU but moves some vectors too far (cosine
  0.97), so `quantize_int8` takes a list of nodes that stay fp32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .spec import ModelSpec

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "embedding"


def export_onnx(module, path: Path, *, opset: int = OPSET) -> Path:
    """Trace `module` (a `PooledEncoder` on the CPU, eager attention) into `path` and check it.

    Batch and sequence axes are dynamic; the example input is 2 × 16 so that neither axis is 1,
    which the tracer would otherwise be tempted to specialize.
    """
    import onnx
    import torch

    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    dynamic = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape check in transformers' masking code;
        # parity (at many shapes) is what proves the dynamic axes right, not these warnings.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def optimize(src: Path, dst: Path, *, spec: ModelSpec, num_heads: int, fp16: bool, use_gpu: bool) -> Path:
    """ORT's BERT optimizer (fused attention, LayerNorm, GELU); fp16 keeps float32 inputs/outputs."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=spec.dim, opt_level=0, use_gpu=use_gpu
    )
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
    return dst


def matmul_nodes(path: Path) -> list[str]:
    """Names of the graph's MatMul nodes (the ones dynamic quantization would touch), in order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]


def weight_sizes(path: Path) -> dict[str, int]:
    """Elements of each MatMul's constant weight (what its int8 form saves is proportional)."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    return {n.name: sizes[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in sizes}


def quantize_int8(src: Path, dst: Path, *, exclude: Sequence[str] = ()) -> Path:
    """Dynamic int8 quantization (weights per channel, activations per batch) of the MatMuls,
    except `exclude`, which stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return dst


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """ORT's quantizer logs advice to pre-process (shape inference) on every call, through the root
    logger; it is meant for static quantization of CNNs and says nothing about vecq's graphs."""
    return "pre-processing before quantization" not in record.getMessage()
