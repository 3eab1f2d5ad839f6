"""Probe (issue 17 item 2): does a bulk run on one model starve the other model's interactive
requests when both are served by one `vecq worker --model EMB --model RERANK` on one device?

Starts that command (one supervised worker process per model, each with its own engine) on a
private Redis, with random models of the chosen size (an embedder and a cross-encoder), then:

1. alone: `--requests` sequential `Client.rerank(query, --docs documents)` on the reranker;
2. loaded: the same requests while a `BulkSubmitter` run (lane "bulk") keeps the embedder busy
   with a corpus from `vecq.worker.bench.corpus.make_corpus`.

Prints the reranker's p50/p99 latency in both phases and the bulk run's texts/s during the second.
Nothing is shared between the two workers but the device (and the CPU and Redis), so the share
each gets is the OS's and the GPU's time-slicing between processes.

    python benchmarks/probes/two_models.py [--size tiny|small|base] [--device cpu|cuda]
        [--requests 200] [--docs 20] [--redis URL]

`--size base` (BERT-base shape: 768 x 12, 512 positions; the cross-encoder with bert-base-uncased's
WordPiece) is meant for `--device cuda`.  On the CPU each worker gets half the physical cores.

Measured on the 2-core sandbox (AMD EPYC, CPU, 2026-12-03; 20 documents per request, sequential):
  tiny  (32 x 2):   alone p50 24.8 / p99 43.9 ms;  beside the bulk run p50 26.4 / p99 46.6 ms
                    (the bulk run meanwhile 786 texts/s)
  small (256 x 4):  alone p50 420 / p99 554 ms;  beside the bulk run p50 726 / p99 1,004 ms
                    (36 texts/s): both engines compute-bound on two cores, and each CPU worker's
                    main thread used about as much CPU as its engine thread.
The bulk producer runs in a process of its own: as a thread of this one it took the GIL from the
timed calls (tiny: p50 38.0 ms beside the bulk run, not 26.4).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vecq.producer import BulkSubmitter, Client
from vecq.worker.bench.baselines import real_tokens
from vecq.worker.bench.corpus import make_corpus

#: (hidden, layers, heads, positions) of each size.
SIZES = {"tiny": (32, 2, 2, 128), "small": (256, 4, 4, 512), "base": (768, 12, 12, 512)}


def write_models(root: Path, size: str) -> tuple[Path, Path]:
    """(embedder, reranker) random model dirs of `size`."""
    from vecq.engines.random_model import write_random_cross_encoder, write_random_encoder

    hidden, layers, heads, positions = SIZES[size]
    dims = {"hidden": hidden, "layers": layers, "heads": heads, "max_positions": positions}
    vocab = "english" if size == "base" else "trained"
    if vocab == "english":  # texts as long as a real English BERT reads them (the GPU run's size)
        from vecq.engines.random_model import write_random_bert

        emb = write_random_bert(root / "emb", hidden=hidden, layers=layers, heads=heads, vocab="english")
    else:
        emb = write_random_encoder(root / "emb", model_type="bert", **dims)
    return emb, write_random_cross_encoder(root / "rerank", vocab=vocab, **dims)


@contextlib.contextmanager
def private_redis(url: str | None) -> Iterator[str]:
    """`url`, or a throwaway server of this probe's own (redis-server when installed)."""
    if url:
        yield url
        return
    from vecq.worker.embed.server import embedded_redis

    with embedded_redis(binary=shutil.which("redis-server")) as private:
        yield private


@contextlib.contextmanager
def two_model_worker(url: str, emb: Path, rerank: Path, device: str, cache: Path) -> Iterator[None]:
    """`vecq worker --model emb=EMB --model rerank=RERANK`, stopped by SIGTERM (a drain) at the end."""
    cmd = [sys.executable, "-m", "vecq.worker", "worker", "--model", f"emb={emb}", "--model"]
    cmd += [f"rerank={rerank}", "--redis", url, "--device", device, "--log-level", "WARNING"]
    if device.startswith("cuda"):
        cmd += ["--precision", "fp16"]  # both models, as a GPU user serves them
    proc = subprocess.Popen(cmd, env={**os.environ, "VECQ_CACHE_DIR": str(cache)})
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rerank_latencies(client: Client, queries: list[str], docs: list[list[str]]) -> np.ndarray:
    """Milliseconds of each sequential `Client.rerank` call."""
    out = []
    for query, documents in zip(queries, docs, strict=True):
        start = time.perf_counter()
        client.rerank(query, documents, model="rerank", timeout=60)
        out.append((time.perf_counter() - start) * 1000)
    return np.array(out)


def bulk_runs(url: str, corpus: list[str], done: Any, started: Any, stop: Any) -> None:
    """Bulk runs of `corpus` on the embedder, one after another, until `stop` is set; `done`
    counts the texts back.  A process of its own: a thread would take the GIL from the calls
    being timed."""
    with Client(url) as client:
        for round_ in range(1_000_000):
            bulk = BulkSubmitter(client, run_id=f"probe-{os.getpid()}-{round_}", model="emb")
            for _index, vectors in bulk.run(corpus):
                with done.get_lock():
                    done.value += len(vectors)
                started.set()
                if stop.is_set():
                    return


def summary(label: str, ms: np.ndarray) -> str:
    p50, p99 = np.percentile(ms, [50, 99])
    return f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, mean {ms.mean():.1f} ms ({len(ms)} calls)"


def measure(url: str, queries: list[str], docs: list[list[str]], corpus: list[str]) -> tuple:
    """(latencies alone, latencies beside the bulk run, the bulk run's texts/s meanwhile)."""
    with Client(url) as client:
        client.embed(["warm up"], model="emb", timeout=600)  # both started and loaded
        client.rerank("warm up", ["a", "b"], model="rerank", timeout=600)
        rerank_latencies(client, queries[:20], docs[:20])
        alone = rerank_latencies(client, queries, docs)
        ctx = multiprocessing.get_context("spawn")
        done, started, stop = ctx.Value("q", 0), ctx.Event(), ctx.Event()
        bulk = ctx.Process(target=bulk_runs, args=(url, corpus, done, started, stop), daemon=True)
        bulk.start()
        if not started.wait(300):
            raise SystemExit("the bulk run finished no chunk in 300 s")
        before, t0 = done.value, time.perf_counter()
        loaded = rerank_latencies(client, queries, docs)
        rate = (done.value - before) / (time.perf_counter() - t0)
        stop.set()
        bulk.join(120)  # at its next chunk: no run left waiting on a stopped worker
    return alone, loaded, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--docs", type=int, default=20, help="Documents per rerank request.")
    ap.add_argument("--bulk-corpus", type=int, default=20_000, help="Texts per bulk run (repeated).")
    ap.add_argument("--redis", help="A Redis to use (default: a private one).")
    args = ap.parse_args()
    corpus = make_corpus(args.bulk_corpus, seed=7)
    pool = make_corpus(args.requests * args.docs, seed=11)
    docs = [pool[i * args.docs : (i + 1) * args.docs] for i in range(args.requests)]
    queries = [f"which one says {d[0].split()[0]}?" for d in docs]
    with tempfile.TemporaryDirectory(prefix="vecq-two-models-") as tmp:
        emb, rerank = write_models(Path(tmp), args.size)
        with private_redis(args.redis) as url, two_model_worker(url, emb, rerank, args.device, Path(tmp)):
            alone, loaded, rate = measure(url, queries, docs, corpus)
        per_text = sum(real_tokens(emb, corpus)) / len(corpus)
    print(f"two models on {args.device}, size {args.size}, {args.docs} documents per rerank request")
    print(summary("rerank alone          ", alone))
    print(summary("rerank beside bulk run", loaded))
    print(f"embedder's bulk run meanwhile: {rate:,.0f} texts/s, {rate * per_text / 1e6:.2f}M real tokens/s")


if __name__ == "__main__":
    main()
