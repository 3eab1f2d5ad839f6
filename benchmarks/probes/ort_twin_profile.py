"""Probe (issue 16): where ModernBERT's unpadded ONNX twin spends its time on ORT CUDA, beside
the padded graph (BENCHMARKS.md, eleventh session).

Builds the 22 x 768 random ModernBERT into a CUDA fp16 bundle (shapes 1 and 64 x 128 and 512),
prints the chain of nodes that feeds each rotary Cos in the padded graph (to see which of them
stayed fp32), then runs both graphs plainly under torch.profiler (its CUPTI trace sees ORT's
kernels too) and prints, per shape, the host time per run, the GPU kernel time and the kernels
that take the most of it.

    PYTHONPATH=... python3 benchmarks/probes/ort_twin_profile.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from vecq.engines.backends.onnx_cuda import OnnxCudaEngine
from vecq.engines.base import Batch
from vecq.engines.build import build_bundle
from vecq.engines.bundle import PACKED_FILE
from vecq.engines.shapes import ShapeSet
from vecq.worker.bench.long import long_model

SHAPES = ShapeSet.grid((1, 64), (128, 512), max_seq_len=512)


def chains(path: Path) -> None:
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    for cos in (n for n in graph.node if n.op_type == "Cos"):
        steps, name = [], cos.input[0]
        while name in producer and len(steps) < 12:
            node = producer[name]
            to = [a.i for a in node.attribute if a.name == "to"]
            steps.append(f"{node.op_type}{to or ''}:{node.name}")
            name = node.input[0] if node.input else ""
        print("Cos", cos.name, "<-", " <- ".join(steps))


def profile(engine: OnnxCudaEngine, batch: Batch, label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    for _ in range(3):
        engine.run(batch)
    with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        t = time.perf_counter()
        for _ in range(5):
            engine.run(batch)
        ms = (time.perf_counter() - t) / 5 * 1e3
    rows = sorted(p.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in rows) / 5 / 1e3
    print(f"\n{label}: {ms:.2f} ms per run (host), GPU kernels {total:.2f} ms per run")
    for e in rows[:14]:
        print(f"  {e.self_device_time_total / 5 / 1e3:8.3f} ms  x{e.count // 5:<5} {e.key[:110]}")


def main() -> None:
    torch.cuda.init()
    with tempfile.TemporaryDirectory() as tmp:
        model = long_model(Path(tmp) / "model", 512, "modernbert")
        bundle = Path(tmp) / "bundle"
        build_bundle(model, bundle, device="cuda", precision="fp16", shapes=SHAPES)
        chains(bundle / "model.onnx")
        rng = np.random.default_rng(0)
        for shape in SHAPES:
            if shape.batch == 1 and shape.seq_len == 512:
                continue
            ids = rng.integers(5, 1400, size=(shape.batch, shape.seq_len), dtype=np.int64)
            lengths = rng.integers(shape.seq_len // 2, shape.seq_len + 1, size=shape.batch)
            mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
            batch = Batch(input_ids=ids * mask, attention_mask=mask, rows=shape.batch)
            for path in (bundle / "model.onnx", bundle / PACKED_FILE):
                engine = OnnxCudaEngine(path, shapes=SHAPES, dim=768, graphs=False)
                engine.warmup()
                profile(engine, batch, f"{path.name} {shape}")
                engine.close()


if __name__ == "__main__":
    main()
