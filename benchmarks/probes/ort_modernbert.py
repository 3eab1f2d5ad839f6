"""Probe (issue 16): ModernBERT base on ORT's CUDA EP, with and without CUDA graphs.

ORT refuses to capture ModernBERT's exported graph (its rotary and window-mask shape arithmetic
runs on the CPU EP), so `OnnxCudaEngine` gives it one session per shape with the weights shared
(engines/backends/onnx_cuda.py).  This builds a random ModernBERT base (22 × 768, the layout of
`vecq bench long --architecture modernbert`, 512 tokens) into a CUDA fp16 bundle, then for each
shape times `engine.run` (host copies included: what a worker pays) with per-shape graphs and
with one plain dynamic session, and with the bundle's padding-free twin (vecq's own unpadded
export, `engines/unpadded_modernbert.py`, one plain session), at two fills of the padded batch
(texts of half to all of the shape's length, and of 1 to all of it), checks all give the same
vectors, and reads the GPU memory each engine took beside the weights' size.

    python3 benchmarks/probes/ort_modernbert.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vecq.engines.backends.onnx_cuda import OnnxCudaEngine
from vecq.engines.base import Batch
from vecq.engines.build import build_bundle
from vecq.engines.bundle import PACKED_FILE
from vecq.engines.parity import cosines
from vecq.engines.shapes import ShapeSet
from vecq.worker.bench.long import long_model

SHAPES = ShapeSet.grid((1, 8, 32, 64), (128, 512), max_seq_len=512)


def _batch(shape, rng: np.random.Generator, shortest: int) -> Batch:  # type: ignore[no-untyped-def]
    ids = rng.integers(5, 1400, size=(shape.batch, shape.seq_len), dtype=np.int64)
    lengths = rng.integers(shortest, shape.seq_len + 1, size=shape.batch)
    mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    return Batch(input_ids=ids * mask, attention_mask=mask, rows=shape.batch)


def _ms(engine: OnnxCudaEngine, batch: Batch, reps: int = 40) -> float:
    for _ in range(3):
        engine.run(batch)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _used_mib() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _engine(path: Path, graphs: bool) -> tuple[OnnxCudaEngine, float, float]:
    before, t = _used_mib(), time.perf_counter()
    engine = OnnxCudaEngine(path, shapes=SHAPES, dim=768, graphs=graphs)
    engine.warmup()
    return engine, _used_mib() - before, time.perf_counter() - t


def main() -> None:
    torch.cuda.init()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model = long_model(Path(tmp) / "model", 512, "modernbert")
        bundle = Path(tmp) / "bundle"
        build_bundle(model, bundle, device="cuda", precision="fp16", shapes=SHAPES)
        print(f"build: {time.perf_counter() - t:.0f} s (export, fp16, parity on the GPU)")
        graphs, graphs_mib, graphs_s = _engine(bundle / "model.onnx", graphs=True)
        plain, plain_mib, plain_s = _engine(bundle / "model.onnx", graphs=False)
        twin, twin_mib, twin_s = _engine(bundle / PACKED_FILE, graphs=False)
        mib = graphs.shared_weight_bytes / 2**20
        print(f"graphs engine: {len(graphs._sessions)} sessions, captures {graphs.captures}, weights shared")
        print(f"  {mib:.0f} MiB; GPU memory {graphs_mib:.0f} MiB, start {graphs_s:.1f} s")
        print(f"plain engine (one dynamic session): GPU memory {plain_mib:.0f} MiB, start {plain_s:.1f} s")
        print(f"unpadded twin (one dynamic session): GPU memory {twin_mib:.0f} MiB, start {twin_s:.1f} s")
        print(f"{'shape':>9} {'fill':>5} {'graphs ms':>10} {'plain ms':>9} {'twin ms':>8} "
              f"{'plain/graphs':>12} {'graphs/twin':>11} {'cosine':>9}")  # fmt: skip
        rng = np.random.default_rng(0)
        for shape in SHAPES:
            for shortest in (shape.seq_len // 2, 1):
                batch = _batch(shape, rng, shortest)
                fill = batch.attention_mask.mean()
                want = graphs.run(batch)
                cos = float(min(cosines(plain.run(batch), want).min(), cosines(twin.run(batch), want).min()))
                g, p, u = _ms(graphs, batch), _ms(plain, batch), _ms(twin, batch)
                ratios = f"{p / g:11.2f}× {g / u:10.2f}×"
                print(f"{shape!s:>9} {fill:5.2f} {g:10.2f} {p:9.2f} {u:8.2f} {ratios} {cos:9.6f}")
        assert graphs.replays > 0 and graphs.captures == len(SHAPES)
        assert cos > 0.999


if __name__ == "__main__":
    main()
