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
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .architectures import ARCHITECTURES
from .spec import ModelSpec

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "embedding"


def export_onnx(module, path: Path, *, opset: int = OPSET, contrib_ops: bool = False) -> Path:
    """Trace `module` (a `PooledEncoder` on the CPU, eager attention) into `path` and check it.

    Batch and sequence axes are dynamic; the example input is 2 × 16 so that neither axis is 1,
    which the tracer would otherwise be tempted to specialize.  `contrib_ops`: the module emits
    ORT's `com.microsoft` ops (ModernBERT's padding-free twin); declared for every export, the
    domain made the exporter warn on every `vecq embed` of a plain model.
    """
    import onnx
    import torch

    vocab = int(getattr(module.encoder.config, "vocab_size", 1001))
    ids = torch.full((2, 16), min(1000, vocab - 1), dtype=torch.long)  # a real token of any vocab
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
            custom_opsets={"com.microsoft": 1} if contrib_ops else None,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def optimize(
    src: Path, dst: Path, *, spec: ModelSpec, num_heads: int, fp16: bool, use_gpu: bool, model_type: str
) -> Path:
    """ORT's transformer optimizer for the architecture (`model_type`, config.json's): fused
    attention, LayerNorm, GELU; fp16 keeps float32 inputs/outputs.

    Architectures ORT has no optimizer for (`Architecture.ort_model_type` None: ModernBERT) keep
    the exported graph, converted to fp16 when asked.  fp16 leaves the nodes under the
    architecture's `fp32_scopes` in fp32 (ModernBERT's rotary angles).
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    arch = ARCHITECTURES[model_type]
    ort_type = arch.ort_model_type
    if ort_type is None:
        model = OnnxModel(onnx.load(str(src)))
    else:
        model = optimize_model(
            str(src),
            model_type=ort_type,
            num_heads=num_heads,
            hidden_size=spec.dim,
            opt_level=0,
            use_gpu=use_gpu,
        )
    if fp16:
        kept = _fp32_nodes(model.model.graph, arch.fp32_scopes)
        model.convert_float_to_float16(keep_io_types=True, node_block_list=kept or None)
        _drop_repeats(model.model.graph)
        skip_round_trips(model.model.graph)
    model.save_model_to_file(str(dst))
    return dst


def _fp32_nodes(graph, scopes: Sequence[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """The nodes under `scopes`, and the `Constant` nodes they read.

    A module called twice exports its second call's nodes under `/scope_1/`.  Some torch
    versions (2.11) emit a scope's constants (ModernBERT's rotary frequencies) as unscoped
    `Constant` nodes, which the fp16 converter would round to fp16 ahead of the fp32 scope.
    """
    scoped = [re.compile(rf"/{re.escape(scope)}(_\d+)?/") for scope in scopes]
    kept = [n for n in graph.node if any(p.search(n.name) for p in scoped)]
    read = {name for n in kept for name in n.input}
    constants = [n for n in graph.node if n.op_type == "Constant" and read.intersection(n.output)]
    return [n.name for n in kept + constants]


def skip_round_trips(graph) -> int:  # type: ignore[no-untyped-def]
    """Let every `Cast(to=float)` of a `Cast(to=float16)` read the first Cast's input instead;
    returns how many were rewired.

    The fp16 converter casts the outputs of fp32-kept nodes to fp16 wherever shape inference
    typed them, and back to fp32 for the next kept node, so a chain of kept nodes still passes
    its values through fp16 (ModernBERT's rotary frequencies, on onnxruntime 1.31 with torch
    2.11's export: cos off by 0.6 at position 4,000).  Skipping the round trip only adds precision.
    """
    from onnx import TensorProto

    def cast_to(node) -> int | None:  # type: ignore[no-untyped-def]
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producer = {out: n for n in graph.node for out in n.output}
    rewired = 0
    for node in graph.node:
        first = producer.get(node.input[0]) if cast_to(node) == TensorProto.FLOAT else None
        if first is not None and cast_to(first) == TensorProto.FLOAT16:
            node.input[0] = first.input[0]
            rewired += 1
    return rewired


def _drop_repeats(graph) -> None:  # type: ignore[no-untyped-def]
    """Keep one of each repeated node and value_info.

    onnxruntime < 1.32's fp16 converter adds, for a tensor that feeds several fp32-kept nodes,
    one identical Cast (and value_info) per consumer, which ORT then refuses to load ("two nodes
    with same node name"); 1.32 adds one and shares it.
    """
    for field, key in ((graph.node, lambda n: n.SerializeToString()), (graph.value_info, lambda v: v.name)):
        seen: set = set()
        unique = [item for item in field if not (key(item) in seen or seen.add(key(item)))]
        del field[:]
        field.extend(unique)


def fuses(model_type: str) -> bool:
    """Whether ORT's optimizer fuses this architecture's attention (and so its packing mode runs)."""
    return ARCHITECTURES[model_type].ort_model_type is not None


def weight_sizes(path: Path) -> dict[str, int]:
    """Elements of each MatMul's constant weight (what its int8 form saves is proportional)."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    return {n.name: sizes[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in sizes}


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    exclude: Sequence[str] = (),
    reduce_range: bool = False,
    unsigned_weights: bool = False,
) -> Path:
    """Dynamic int8 quantization (weights per channel, activations per tensor) of the MatMuls,
    except `exclude`, which stay fp32.

    `reduce_range` keeps weights to 7 bits.  Without VNNI, ORT's fast uint8 × int8 kernel
    multiplies with AVX2's `vpmaddubsw`, which sums pairs of products in 16 bits and saturates
    once activations spread over their whole 8-bit range -- as they do after `split_cls`.
    `unsigned_weights` (uint8) avoids that kernel too, but runs at about fp32 speed on AVX2;
    BENCHMARKS.md measures it (the int8 probe); builds do not use it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
            nodes_to_exclude=list(exclude),
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return dst


#: Suffix of the MatMul that `split_cls` adds for the [CLS] row of each weight MatMul.
CLS_SUFFIX = "_cls"


def split_cls(src: Path, dst: Path, *, skip: str = r"/self/MatMul(_\d+)?$") -> list[str]:
    """Rewrite each weight MatMul `X·W` as `concat(X[:, :1]·W, X[:, 1:]·W)` along the sequence
    axis; returns the names of the MatMuls split (each keeps its name for the rest-of-text half,
    and gains a `CLS_SUFFIX` twin for the [CLS] row).

    Why: dynamic int8 gives a whole activation tensor one scale, and in BERT-family encoders the
    [CLS] row carries activations far larger than any other token's, so with one shared scale the
    other tokens get a handful of levels.  Quantized apart, each half gets its own scale: on
    all-MiniLM-L6-v2 this alone lifts the worst parity cosine of all-int8 from 0.971 to 0.986
    (BENCHMARKS.md, the int8 probe), for two Slices per input and one Concat per
    MatMul.  `skip` names MatMuls left whole (activation × activation ones in attention).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    for name, value in (("cls_s0", 0), ("cls_e0", 1), ("cls_s1", 1), ("cls_e1", 2**62), ("cls_ax", 1)):
        graph.initializer.append(helper.make_tensor(f"vecq_{name}", TensorProto.INT64, [1], [value]))
    nodes, split = [], []
    halves: dict[str, tuple[str, str]] = {}  # Q, K and V read one input: slice it once
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or re.search(skip, node.name):
            nodes.append(node)
            continue
        x, w, y, name = node.input[0], node.input[1], node.output[0], node.name
        if x not in halves:
            halves[x] = (f"{name}_x_cls", f"{name}_x_rest")
            for half, (start, end) in zip(
                halves[x], (("cls_s0", "cls_e0"), ("cls_s1", "cls_e1")), strict=True
            ):
                args = [x, f"vecq_{start}", f"vecq_{end}", "vecq_cls_ax"]
                nodes.append(helper.make_node("Slice", args, [half], name=f"{half}_slice"))
        x_cls, x_rest = halves[x]
        nodes += [
            helper.make_node("MatMul", [x_cls, w], [f"{name}_y_cls"], name=name + CLS_SUFFIX),
            helper.make_node("MatMul", [x_rest, w], [f"{name}_y_rest"], name=name),
            helper.make_node(
                "Concat", [f"{name}_y_cls", f"{name}_y_rest"], [y], name=f"{name}_concat", axis=1
            ),
        ]
        split.append(name)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return split


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """ORT's quantizer logs advice to pre-process (shape inference) on every call, through the root
    logger; it is meant for static quantization of CNNs and says nothing about vecq's graphs."""
    return "pre-processing before quantization" not in record.getMessage()
