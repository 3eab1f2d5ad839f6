"""GPU benchmarks of issue 4: the seed write-up's own workload and the engine table.

Each table is measured in one run, baseline and vecq side by side, so ratios are fair.  The model
is a random-weight BERT of the write-up's shape (BERT-base, vocab 21128, CLS pooling) built on the
spot: speed does not depend on the weights.

- `seed_workload`: the write-up's three short Chinese queries, batch 1/2/4/8/16, calls/s with the
  tokenizer included.  Baseline: the write-up's way (transformers tokenizer padded to 200 tokens,
  torch fp32 eager, CLS).  vecq: `Embedder.embed` (tokenizers called directly, bucketed to 16
  tokens, fp16, one CUDA graph per shape).
- `engine_table`: seq/s per engine × batch at a fixed seq_len, rows half padded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vecq.engines import Embedder, ShapeSet, backends
from vecq.engines.base import Batch, Engine
from vecq.engines.bundle import read_manifest
from vecq.engines.shapes import Shape
from vecq.engines.spec import ModelSpec, read_spec
from vecq.engines.tokenizer import TextTokenizer

SEED_QUERIES = ("你好啊", "今天天气怎么样", "我要暴富")
SEED_BATCHES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Row:
    label: str
    values: dict[int, float]  # batch -> rate


def per_second(fn: Callable[[], object], *, min_s: float = 1.0, min_calls: int = 20) -> float:
    """Calls per second of `fn` (median of per-call times after two warm-up calls)."""
    fn()
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + min_s
    while time.perf_counter() < deadline or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def rotating(fn: Callable[[object], object], items: Sequence[object]) -> Callable[[], object]:
    """A no-argument call of `fn` on the next of `items` each time (never the same input twice in a row)."""
    state = {"i": 0}

    def call() -> object:
        state["i"] += 1
        return fn(items[state["i"] % len(items)])

    return call


def writeup_baseline(model_dir: Path, device: str) -> Callable[[list[str]], np.ndarray]:
    """The seed write-up's `predict_vec`: transformers tokenizer, padded to 200, fp32 eager, CLS."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).to(device).eval()

    def predict_vec(texts: list[str]) -> np.ndarray:
        inputs = tokenizer(texts, padding="max_length", max_length=200, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**{k: v.to(device) for k, v in inputs.items()}).last_hidden_state[:, 0]
        return out.cpu().numpy()

    return predict_vec


def seed_embedder(model_dir: Path, device: str, engine: str, work: Path) -> Embedder:
    """vecq on the seed workload: shapes batch 1..16 × seq 16..64, the named GPU engine."""
    spec = read_spec(model_dir).model_copy(update={"max_seq_len": 64})
    shapes = ShapeSet.grid(SEED_BATCHES, (16, 32, 64), max_seq_len=64)
    return Embedder(
        spec=spec,
        tokenizer=TextTokenizer.from_dir(model_dir, max_seq_len=64),
        engine=make_gpu_engine(engine, model_dir, spec, shapes, device, work=work),
    )


#: Keyword options of the onnx backend that give each ORT variant, on one CUDA fp16 bundle.
_ORT_VARIANTS: dict[str, dict[str, object]] = {
    "ort16g": {"graphs": True, "packed_from_batch": 1 << 30},  # fused graph, one CUDA graph per shape
    "ort16": {"graphs": False, "packed_from_batch": 1 << 30},  # fused graph, plain runs
    "packed16": {"graphs": False, "packed_from_batch": 1},  # ORT's packing mode for every batch
    "hybrid": {},  # what a worker serves: graphs below 32 rows, packed from 32
}


def make_gpu_engine(
    kind: str, model_dir: Path, spec: ModelSpec, shapes: ShapeSet, device: str, *, work: Path
) -> Engine:
    """torch32 | torch16 | torch16g (torch fp16 + CUDA graphs) | ort16g | ort16 | packed16 | hybrid,
    each made as a user's would be: through the backend registry, the ORT ones from a CUDA fp16
    bundle that `vecq build` makes (parity-checked) for exactly `shapes`."""
    if kind.startswith("torch"):
        precision = "fp32" if kind == "torch32" else "fp16"
        return backends.for_model_dir(
            "torch", model_dir, spec=spec, shapes=shapes, device=device, precision=precision,
            graphs=kind == "torch16g",
        )  # fmt: skip
    bundle = gpu_bundle(model_dir, spec, shapes, work)
    options = _ORT_VARIANTS[kind]
    return backends.for_bundle("onnx", bundle, read_manifest(bundle), device=device, **options)


def gpu_bundle(model_dir: Path, spec: ModelSpec, shapes: ShapeSet, work: Path) -> Path:
    """A CUDA fp16 bundle of `shapes` under `work`, built once per shape set."""
    from vecq.engines.build import build_bundle

    bundle = work / ("bundle-fp16-" + "-".join(str(L) for L in shapes.seq_lens))
    if not (bundle / "manifest.json").is_file():
        build_bundle(
            model_dir, bundle, device="cuda", precision="fp16", shapes=shapes, name=spec.name,
            max_seq_len=spec.max_seq_len,
        )  # fmt: skip
    return bundle


def seed_workload(
    model_dir: Path, device: str, work: Path, engines: Sequence[str] = ("torch16g", "ort16g")
) -> list[Row]:
    """calls/s of the write-up's benchmark: baseline and vecq engines, same queries, same run."""
    batches = {b: [SEED_QUERIES[i % 3] for i in range(b)] for b in SEED_BATCHES}
    baseline = writeup_baseline(model_dir, device)
    rows = [
        Row(
            "write-up: padded to 200, torch fp32 eager",
            {b: per_second(rotating(baseline, [t])) for b, t in batches.items()},
        )
    ]
    for kind in engines:
        emb = seed_embedder(model_dir, device, kind, work)
        emb.warmup()
        rates = {b: per_second(rotating(emb.embed, [t])) for b, t in batches.items()}
        rows.append(Row(f"vecq {kind} (as served, tokenizer incl.)", rates))
        emb.close()
    return rows


def half_padded(shape: Shape, rng: np.random.Generator, *, vocab: int, n: int = 6) -> list[Batch]:
    """Batches of `shape` whose odd rows are padded to half length; fresh random ids each."""
    out = []
    for _ in range(n):
        lengths = np.where(np.arange(shape.batch) % 2 == 0, shape.seq_len, shape.seq_len // 2)
        mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(1000, vocab, size=(shape.batch, shape.seq_len), dtype=np.int64) * mask
        ids[:, 0] = 101
        out.append(Batch(input_ids=ids, attention_mask=mask, rows=shape.batch))
    return out


def engine_table(
    model_dir: Path, device: str, work: Path, *, seq_len: int, batches: Sequence[int], engines: Sequence[str]
) -> list[Row]:
    """seq/s per engine × batch, half-padded rows, each engine on the same batches."""
    import json

    spec = read_spec(model_dir)
    shapes = ShapeSet([Shape(b, seq_len) for b in batches])
    rng = np.random.default_rng(0)
    vocab = int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
    work_batches = {b: half_padded(Shape(b, seq_len), rng, vocab=vocab) for b in batches}
    rows = []
    for kind in engines:
        eng = make_gpu_engine(kind, model_dir, spec, shapes, device, work=work)
        eng.warmup()
        rows.append(Row(kind, {b: b * per_second(rotating(eng.run, w)) for b, w in work_batches.items()}))
        eng.close()
    return rows


ENGINE_COLUMNS = ("torch32", "torch16", "torch16g", "ort16", "ort16g", "packed16", "hybrid")
TABLE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def run_gpu_tables(device: str, *, seed: bool, shape_table: bool, model: str) -> None:
    """Print the seed-workload table and/or the engine × batch tables (seq 128 and 200)."""
    import tempfile

    from .models import RANDOM_BERT_BASE_ZH, model_dir

    with tempfile.TemporaryDirectory(prefix="vecq-gpubench-") as tmp:
        work = Path(tmp)
        model = model_dir(RANDOM_BERT_BASE_ZH if model == "default" else model, work)
        if seed:
            engines = ("torch16g", "ort16g") if _ort_cuda() else ("torch16g",)
            if len(engines) == 1:
                print("onnxruntime-gpu is not installed: the seed workload runs torch16g only")
            print_rows(
                "seed workload: calls/s (one call = one batch of the three queries, tokenizer incl.)",
                seed_workload(model, device, work, engines),
            )
        if shape_table:
            for seq_len in (128, 200):
                rows = engine_table(
                    model, device, work, seq_len=seq_len, batches=TABLE_BATCHES, engines=ENGINE_COLUMNS
                )
                print_rows(f"engines: seq/s at seq {seq_len}, half the rows padded to {seq_len // 2}", rows)


def _ort_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def print_rows(title: str, rows: list[Row]) -> None:
    batches = sorted({b for r in rows for b in r.values})
    print(f"\n{title}")
    print(f"{'':<44}" + "".join(f"{'B=' + str(b):>10}" for b in batches))
    for r in rows:
        print(f"{r.label:<44}" + "".join(f"{r.values.get(b, float('nan')):>10,.0f}" for b in batches))
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{'  ratio ' + r.label[:36]:<44}"
            + "".join(
                f"{r.values[b] / base.values[b]:>9.1f}×"
                for b in batches
                if b in r.values and b in base.values
            )
        )
