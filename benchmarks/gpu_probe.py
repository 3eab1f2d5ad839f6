"""GPU engine probe (issue 4): build a BERT-base-shaped model, export it the vecq way, and time
every GPU engine vecq has on the same batches, in one run.  Run on the device machine:

    python benchmarks/gpu_probe.py --out $OUT/probe.json

Workloads (DESIGN.md, "Performance notes"): seq 128 with half the rows padded to 64 ("half"),
and a real-length mix drawn from the corpus distribution (mean ~47 tokens, p95 ~114) ("mix").
Prints a table of seq/s per engine × batch and the checks (fp16 vs fp32 cosine, graph vs
no-graph equality, captures per shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vecq.engines.base import Batch
from vecq.engines.shapes import Shape, ShapeSet
from vecq.engines.spec import ModelSpec

BATCHES = (1, 8, 32, 128, 256)
SEQ = 128


def make_bert_base(root: Path, *, vocab: int = 21128) -> Path:
    """Random BERT-base with the Chinese BERT vocab size (the write-up's model shape)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(root, safe_serialization=True)
    return root


def batches(kind: str, b: int, rng: np.random.Generator, n: int = 6) -> list[Batch]:
    """n different batches of shape (b, 128): fresh random ids each, never zeros."""
    out = []
    for _ in range(n):
        if kind == "half":
            lengths = np.where(np.arange(b) % 2 == 0, SEQ, 64)
        else:
            lengths = np.clip(rng.lognormal(mean=3.6, sigma=0.55, size=b).astype(int), 4, SEQ)
        ids = rng.integers(1000, 20000, size=(b, SEQ), dtype=np.int64)
        mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
        ids[:, 0], ids = 101, ids * mask
        out.append(Batch(input_ids=ids, attention_mask=mask, rows=b))
    return out


def time_engine(engine, work: list[Batch], *, min_s: float = 1.0) -> float:
    """Median seconds per call over rotating batches (each call synchronizes: returns numpy)."""
    for bt in work[:2]:
        engine.run(bt)
    times, t_end = [], time.perf_counter() + min_s
    i = 0
    while time.perf_counter() < t_end or len(times) < 10:
        t0 = time.perf_counter()
        engine.run(work[i % len(work)])
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(times)


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def build_onnx(model_dir: Path, work: Path, spec: ModelSpec) -> dict[str, Path]:
    from vecq.engines.export import export_onnx, optimize
    from vecq.engines.pooled import load_pooled

    raw = export_onnx(load_pooled(model_dir, spec, attn_implementation="eager"), work / "raw.onnx")
    fused = optimize(raw, work / "fused16.onnx", spec=spec, num_heads=12, fp16=True, use_gpu=True)
    files = {"fused16": fused}
    try:
        import onnx
        from onnxruntime.transformers.convert_to_packing_mode import PackingMode
        from onnxruntime.transformers.onnx_model import OnnxModel

        packed = OnnxModel(onnx.load(str(fused)))
        PackingMode(packed).convert()
        packed.save_model_to_file(str(work / "packed16.onnx"))
        files["packed16"] = work / "packed16.onnx"
    except Exception as exc:  # reported, the rest of the probe goes on
        print(f"packing mode failed: {type(exc).__name__}: {exc}")
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe.json"))
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--engines", default="torch32,torch16,torch16g,ort16g,ort16,packed16")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batches.split(",")]
    wanted = args.engines.split(",")
    rng = np.random.default_rng(0)
    shapes = ShapeSet([Shape(b, SEQ) for b in sizes])
    spec = ModelSpec(name="bert-base-random", dim=768, pooling="cls", normalize=False, max_seq_len=512)
    report: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "shapes": shapes.to_list(),
        "rows": {},
        "checks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_bert_base(work / "model")
        t0 = time.perf_counter()
        files = build_onnx(model_dir, work, spec)
        report["export_s"] = time.perf_counter() - t0
        engines = make_engines(model_dir, spec, shapes, files, wanted)
        run_all(engines, sizes, rng, report)
        run_checks(engines, shapes, rng, report)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report, sizes)


def make_engines(model_dir: Path, spec: ModelSpec, shapes: ShapeSet, files: dict, wanted: list[str]) -> dict:
    from vecq.engines.backends.onnx_cuda import OnnxCudaEngine
    from vecq.engines.backends.torch import TorchEngine
    from vecq.engines.backends.torch_graphs import TorchGraphEngine

    makers = {
        "torch32": lambda: TorchEngine.from_model_dir(model_dir, spec=spec, shapes=shapes, device="cuda"),
        "torch16": lambda: TorchEngine.from_model_dir(
            model_dir, spec=spec, shapes=shapes, device="cuda", precision="fp16"
        ),
        "torch16g": lambda: TorchGraphEngine(
            TorchEngine.from_model_dir(
                model_dir, spec=spec, shapes=shapes, device="cuda", precision="fp16"
            ).module,
            shapes=shapes,
            dim=spec.dim,
        ),
        "ort16g": lambda: OnnxCudaEngine(files["fused16"], shapes=shapes, dim=spec.dim, graphs=True),
        "ort16": lambda: OnnxCudaEngine(files["fused16"], shapes=shapes, dim=spec.dim, graphs=False),
        "packed16": lambda: OnnxCudaEngine(files["packed16"], shapes=shapes, dim=spec.dim, graphs=False),
    }
    engines = {}
    for name in wanted:
        try:
            t0 = time.perf_counter()
            engines[name] = makers[name]()
            engines[name].warmup()
            print(f"{name}: ready in {time.perf_counter() - t0:.1f}s")
        except Exception as exc:
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
    return engines


def run_all(engines: dict, sizes: list[int], rng: np.random.Generator, report: dict) -> None:
    for kind in ("half", "mix"):
        for b in sizes:
            work = batches(kind, b, rng)
            real = float(np.mean([w.attention_mask.sum() for w in work]))
            for name, eng in engines.items():
                try:
                    s = time_engine(eng, work)
                except Exception as exc:
                    print(f"{name} {kind} B={b}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                report["rows"][f"{kind}/{b}/{name}"] = {
                    "s_per_call": s,
                    "seq_per_s": b / s,
                    "real_tokens_per_s": real / s,
                }


def run_checks(engines: dict, shapes: ShapeSet, rng: np.random.Generator, report: dict) -> None:
    checks = report["checks"]
    for b in (8, 32):
        if Shape(b, SEQ) not in shapes:
            continue
        bt = batches("mix", b, rng, n=1)[0]
        ref = engines["torch32"].run(bt) if "torch32" in engines else None
        for name, eng in engines.items():
            if ref is not None and name != "torch32":
                checks[f"cos_min_vs_fp32/{name}/B{b}"] = cos_min(eng.run(bt), ref)
        if "ort16g" in engines and "ort16" in engines:
            checks[f"graph_vs_nograph_maxabs/ort/B{b}"] = float(
                np.abs(engines["ort16g"].run(bt) - engines["ort16"].run(bt)).max()
            )
        if "torch16g" in engines and "torch16" in engines:
            checks[f"graph_vs_eager_maxabs/torch16/B{b}"] = float(
                np.abs(engines["torch16g"].run(bt) - engines["torch16"].run(bt)).max()
            )
    for name in ("ort16g", "torch16g"):
        if name in engines:
            checks[f"captures/{name}"] = {"captures": engines[name].captures, "shapes": len(shapes)}


def print_table(report: dict, sizes: list[int]) -> None:
    print(f"\n{report['gpu']}  export {report.get('export_s', 0):.0f}s   seq/s (real tokens/s for mix)")
    names = sorted({k.split("/")[2] for k in report["rows"]})
    for kind in ("half", "mix"):
        print(f"\n{kind:5} " + "".join(f"{n:>12}" for n in names))
        for b in sizes:
            cells = []
            for n in names:
                r = report["rows"].get(f"{kind}/{b}/{n}")
                cells.append(f"{r['seq_per_s']:>12,.0f}" if r else f"{'-':>12}")
            print(f"B={b:<4}" + "".join(cells))
    print("\nchecks:", json.dumps(report["checks"], indent=1))


if __name__ == "__main__":
    main()
