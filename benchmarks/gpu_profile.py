"""Profiles behind the GPU targets vecq misses (issue 4): where each one's time goes.

Run on the device machine (a CUDA fp16 bundle of a random BERT-base is built on the spot):

    python benchmarks/gpu_profile.py --json $OUT/gpu-profile.json

Three kinds of profile, each of exactly what a worker runs (the bundle's own engines and shapes):

- kernels: CUDA kernel time per call, by kind (GEMM, attention, other), against wall time per
  call, via `torch.profiler` (CUPTI sees every kernel in the process, ONNX Runtime's included).
  GPU time / wall time says whether a case is bound by the card or by the host.
- host: `cProfile` of `Embedder.embed` (seed workload and bulk corpus): what the host spends
  around the engine call, by function.
- latency: one interactive request's time split at the job's own timestamps (enqueued_at,
  started_at, ended_at, read back from the job hash) into queue wait, work and delivery, with
  the worker idle and while a bulk run saturates it.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import click
import numpy as np

# GEMM FLOPs per real token of BERT-base (12 layers × (4·768² + 2·768·3072) MACs × 2); attention
# adds 12 × 4 × 768 × seq FLOPs per token.
LINEAR_FLOP_PER_TOKEN = 12 * (4 * 768 * 768 + 2 * 768 * 3072) * 2


def kind_of(kernel: str) -> str:
    k = kernel.lower()
    if "memcpy" in k or "memset" in k:
        return "copy"
    if any(s in k for s in ("attention", "fmha", "flash", "softmax", "mha")):
        return "attention"
    if any(s in k for s in ("gemm", "cutlass", "xmma", "sm90_", "sm80_", "cublas", "matmul")):
        return "gemm"
    return "other (norm, bias, gelu, pooling, layout)"


def kernel_profile(fn: Callable[[], object], *, calls: int = 30) -> dict:
    """GPU kernel time per call by kind, and wall time per call measured without the profiler."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    by_kind: dict[str, float] = {}
    top: list[tuple[str, int, float]] = []
    for evt in prof.key_averages():
        if evt.device_type != DeviceType.CUDA:
            continue
        us = float(getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0))
        by_kind[kind_of(evt.key)] = by_kind.get(kind_of(evt.key), 0.0) + us / calls
        top.append((evt.key[:90], int(evt.count) // calls, us / calls))
    top.sort(key=lambda t: -t[2])
    wall_us = statistics.median(walls) * 1e6
    gpu_us = sum(by_kind.values())
    return {
        "wall_us_per_call": wall_us,
        "gpu_us_per_call": gpu_us,
        "gpu_share_of_wall": gpu_us / wall_us,
        "kernels_per_call": sum(n for _, n, _ in top),
        "by_kind_us": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"kernel": k, "per_call": n, "us": round(us, 1)} for k, n, us in top[:12]],
    }


def host_profile(fn: Callable[[], object], *, calls: int, top: int = 14) -> dict:
    """cProfile of `calls` calls: cumulative time per function, per call."""
    fn()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    wall = (time.perf_counter() - t0) / calls
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((ct / calls, tt / calls, nc // calls, f"{Path(file).name}:{line}({func})"))
    rows.sort(key=lambda r: -r[0])
    return {
        "wall_us_per_call": wall * 1e6,
        "functions": [
            {"cum_us": round(c * 1e6, 1), "self_us": round(s * 1e6, 1), "calls": n, "where": w}
            for c, s, n, w in rows[:top]
        ],
    }


def batch_of(shape, rng: np.random.Generator, lengths: np.ndarray, vocab: int):
    from vecq.engines.base import Batch

    mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, vocab, size=(shape.batch, shape.seq_len), dtype=np.int64) * mask
    ids[:, 0] = 101
    return Batch(input_ids=ids, attention_mask=mask, rows=shape.batch)


def engine_cases(emb, vocab: int) -> dict:
    """Kernel profiles of the engine cases behind the targets (seq/s, real tokens/s, batch 1)."""
    from vecq.engines.shapes import Shape

    rng = np.random.default_rng(0)
    hybrid = emb.engine
    cases: dict[str, dict] = {}

    def add(name: str, engine, shape, lengths: np.ndarray) -> None:
        batch = batch_of(shape, rng, lengths, vocab)
        prof = kernel_profile(lambda: engine.run(batch))
        real = int(lengths.sum())
        prof["real_tokens"] = real
        prof["seq_per_s"] = shape.batch / (prof["wall_us_per_call"] / 1e6)
        prof["real_tokens_per_s"] = real / (prof["wall_us_per_call"] / 1e6)
        gemm_us = prof["by_kind_us"].get("gemm", 0.0)
        if gemm_us:
            prof["gemm_tflops"] = real * LINEAR_FLOP_PER_TOKEN / (gemm_us * 1e-6) / 1e12
        cases[name] = prof
        click.echo(
            f"{name:<44} wall {prof['wall_us_per_call']:9.1f} us  gpu {prof['gpu_us_per_call']:9.1f} us "
            f"({prof['gpu_share_of_wall']:.0%})  {prof['seq_per_s']:>9,.0f} seq/s  "
            + "  ".join(f"{k.split()[0]} {v:.0f}" for k, v in prof["by_kind_us"].items())
        )

    half = Shape(128, 128)
    lengths = np.where(np.arange(128) % 2 == 0, 128, 64)
    add("packed B=128 seq128 half-padded", hybrid.packed, half, lengths)
    add("graphs B=128 seq128 half-padded", hybrid.graphs, half, lengths)
    mix = np.clip(rng.lognormal(mean=3.6, sigma=0.55, size=128).astype(int), 4, 128)
    add("packed B=128 seq128 real-length mix", hybrid.packed, half, mix)
    for L in (16, 128):
        add(f"graphs B=1 seq{L}", hybrid.graphs, Shape(1, L), np.array([L]))
    add(
        "graphs B=8 seq16 (seed workload shape)",
        hybrid.graphs,
        Shape(8, 16),
        np.array([5, 9, 6] * 2 + [5, 9]),
    )
    return cases


def latency_split(url: str, model: str, texts: list[str], n: int) -> dict:
    """Per request: queue wait (enqueued → started), work (started → ended), delivery (ended →
    the client has the vectors), from the job hash's own timestamps; medians and p99s in ms."""
    import redis

    from vecq.producer import Client

    conn = redis.Redis.from_url(url)
    parts: dict[str, list[float]] = {"total": [], "submit": [], "queue": [], "work": [], "delivery": []}
    with Client(url) as client:
        for i in range(n):
            t0 = time.time()
            job = client.submit([texts[i % len(texts)]], model=model, lane="interactive")
            t1 = time.time()
            client.result(job, timeout=30)
            t2 = time.time()
            enq, start, end = (
                datetime.fromisoformat(v.decode()).timestamp()
                for v in conn.hmget(f"rq:job:{job.id}", "enqueued_at", "started_at", "ended_at")
            )
            parts["total"].append(t2 - t0)
            parts["submit"].append(t1 - t0)
            parts["queue"].append(start - enq)
            parts["work"].append(end - start)
            parts["delivery"].append(t2 - end)
    out = {}
    for k, v in parts.items():
        ms = np.asarray(v) * 1e3
        out[k] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    return out


def latency_cases(
    bundle: Path,
    model: str,
    texts: list[str],
    n: int,
    tmp: Path,
    device: str = "cuda",
) -> dict:
    from vecq.worker.bench_pipeline import _bulk, _start_worker, _wait_workers, bulk_busy
    from vecq.worker.embedded import embedded_redis

    out = {}
    with embedded_redis() as url:
        proc = _start_worker(url, bundle, device, tmp / "worker.log")
        try:
            _wait_workers(url, [proc])
            _bulk(url, model, texts[:5000], "warm")
            out["bulk_texts_per_s"] = _bulk(url, model, texts, "profiled")
            click.echo(f"bulk through Redis: {out['bulk_texts_per_s']:,.0f} texts/s")
            out["idle"] = latency_split(url, model, texts, n)
            with bulk_busy(url, model, texts):
                out["under bulk"] = latency_split(url, model, texts, n)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    for case, split in out.items():
        if not isinstance(split, dict):
            continue
        click.echo(
            f"latency {case:<11} "
            + "  ".join(f"{k} p50 {v['p50']:.2f} p99 {v['p99']:.2f}" for k, v in split.items())
            + " ms"
        )
    return out


def seed_embedder(model_dir: Path, bundle: Path):
    """What `vecq bench engines --seed-workload` times as "ort16g", on this run's bundle files."""
    from vecq.engines import Embedder, ShapeSet
    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer
    from vecq.worker.gpubench import SEED_BATCHES, make_gpu_engine

    spec = read_spec(model_dir).model_copy(update={"max_seq_len": 64})
    shapes = ShapeSet.grid(SEED_BATCHES, (16, 32, 64), max_seq_len=64)
    files = {"fused16": bundle / "model.onnx", "packed16": bundle / "model.packed.onnx"}
    engine = make_gpu_engine("ort16g", model_dir, spec, shapes, "cuda", files)
    return Embedder(spec=spec, tokenizer=TextTokenizer.from_dir(model_dir, max_seq_len=64), engine=engine)


@click.command()
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--texts", "n_texts", type=int, default=20000, show_default=True)
@click.option("--latency-requests", type=int, default=200, show_default=True)
@click.option("--skip-latency", is_flag=True)
def main(json_out: Path, n_texts: int, latency_requests: int, skip_latency: bool) -> None:
    import torch

    from vecq.engines import Embedder
    from vecq.engines.build import build_bundle
    from vecq.engines.random_model import write_random_bert
    from vecq.worker.corpus import make_corpus
    from vecq.worker.gpubench import SEED_QUERIES

    report: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    texts = make_corpus(n_texts, seed=1)
    with tempfile.TemporaryDirectory(prefix="vecq-profile-") as tmp_s:
        tmp = Path(tmp_s)
        model_dir = write_random_bert(tmp / "bert-base")
        bundle = tmp / "bundle"
        build_bundle(model_dir, bundle, device="cuda", precision="fp16", progress=lambda s: None)
        vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
        with Embedder.load(bundle, device="cuda") as emb:
            emb.warmup()
            report["engines"] = engine_cases(emb, vocab)
            emb.embed(texts[:2000])
            t0 = time.perf_counter()
            emb.embed(texts)
            report["bulk_engine_only_texts_per_s"] = len(texts) / (time.perf_counter() - t0)
            report["bulk_host"] = host_profile(lambda: emb.embed(texts[:4000]), calls=2, top=18)
            report["bulk_kernels"] = kernel_profile(lambda: emb.embed(texts[:4000]), calls=2)
            click.echo(f"bulk Embedder.embed: {report['bulk_engine_only_texts_per_s']:,.0f} texts/s")
            name = emb.name
        seed = seed_embedder(model_dir, bundle)
        seed.warmup()
        report["seed"] = {}
        for b in (1, 8, 16):
            batch = [SEED_QUERIES[i % 3] for i in range(b)]
            report["seed"][f"B={b}"] = {
                "kernels": kernel_profile(lambda batch=batch: seed.embed(batch), calls=50),
                "host": host_profile(lambda batch=batch: seed.embed(batch), calls=200),
            }
            k = report["seed"][f"B={b}"]["kernels"]
            click.echo(
                f"seed B={b:<3} wall {k['wall_us_per_call']:.0f} us  gpu {k['gpu_us_per_call']:.0f} us "
                f"({k['gpu_share_of_wall']:.0%}), {k['kernels_per_call']} kernels"
            )
        seed.close()
        if not skip_latency:
            report["latency"] = latency_cases(bundle, name, texts, latency_requests, tmp)
    json_out.write_text(json.dumps(report, indent=1))
    click.echo(f"wrote {json_out}")


if __name__ == "__main__":
    sys.exit(main())
