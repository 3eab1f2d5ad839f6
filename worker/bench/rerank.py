"""`vecq bench rerank`: a base-size cross-encoder scoring RAG pairs, vecq against `CrossEncoder`.

A RAG query reranks the passages retrieval found for it: one query, tens to hundreds of
passages of a few sentences.  The model is BERT-base (12 × 768, random weights, one label) with
bert-base-uncased's WordPiece, so pairs are as long as a real English BERT reranker reads them
(ms-marco cross-encoders are this architecture); pairs of a query and a passage of 2–8 corpus
sentences, cut at 512 tokens as `CrossEncoder` cuts them.  Rows, all on the same pairs:
`Reranker.score` in process, one call per query; every query's job through Redis to one
`vecq worker` at once (bulk); `CrossEncoder.predict` fp16 (batch 32, its default, and 128) on
all pairs in one call.  Then the latency of one query's rerank through Redis, with the worker
otherwise idle.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import click


def rerank_model(root: Path, *, hidden: int = 768, layers: int = 12, heads: int = 12) -> Path:
    """A base-size random BERT cross-encoder with the English WordPiece vocab, reading 512."""
    from vecq.engines.random_model import write_random_cross_encoder

    return write_random_cross_encoder(
        root, model_type="bert", hidden=hidden, layers=layers, heads=heads, max_positions=512, vocab="english"
    )


def rag_pairs(queries: int, per_query: int, *, seed: int = 5) -> list[tuple[str, list[str]]]:
    """(query, passages) per query: a corpus sentence and passages of 2–8 sentences each."""
    from .corpus import sentence

    rng = random.Random(seed)
    return [
        (sentence(rng), [" ".join(sentence(rng) for _ in range(rng.randint(2, 8))) for _ in range(per_query)])
        for _ in range(queries)
    ]


@click.command("rerank")
@click.option("--device", default="cuda", show_default=True)
@click.option("--queries", type=int, default=200, show_default=True)
@click.option("--passages", "per_query", type=int, default=100, show_default=True, help="Per query.")
@click.option("--latency-requests", type=int, default=100, show_default=True)
@click.option("--small", is_flag=True, help="A 2-layer 128-wide model (a CPU smoke run).")
def rerank_bench(device: str, queries: int, per_query: int, latency_requests: int, small: bool) -> None:
    """Rerank pairs/s: vecq in process and through Redis against CrossEncoder.predict fp16."""
    from . import baselines
    from .pipeline import print_rates

    with tempfile.TemporaryDirectory(prefix="vecq-rerank-") as tmp:
        sizes = {"hidden": 128, "layers": 2, "heads": 2} if small else {}
        model_dir = rerank_model(Path(tmp) / "reranker", **sizes)
        work = rag_pairs(queries, per_query)
        tokens = _pair_tokens(model_dir, work)
        n = queries * per_query
        rates = [_in_process(model_dir, device, work, tokens)]
        bulk, latency = _through_redis(model_dir, device, work, tokens, Path(tmp), latency_requests)
        rates.append(bulk)
        for batch in (32, 128):
            rates.append(_cross_encoder(model_dir, device, work, tokens, batch))
        ceiling = baselines.matmul_tflops(device) * 1e12 / baselines.flops_per_token(model_dir)
        title = (
            f"rerank on {device}: {'small' if small else 'BERT-base'} cross-encoder (random, English "
            "WordPiece), "
            f"{queries} queries × {per_query} passages = {n:,} pairs of {tokens / n:.0f} tokens; "
            f"dense ceiling {ceiling / 1e6:.2f}M tokens/s (texts/s below = pairs/s)"
        )
        print_rates(title, rates, ceiling, versus=("CrossEncoder.predict", "× CE32"))
        p50, p99 = latency
        click.echo(
            f"  one query's rerank ({per_query} passages) through Redis, idle: "
            f"p50 {p50:.2f} ms  p99 {p99:.2f} ms"
        )


def _pair_tokens(model_dir: Path, work: list[tuple[str, list[str]]]) -> int:
    from vecq.engines.cross_encoder import read_rerank_spec
    from vecq.engines.tokenizer import TextTokenizer

    spec, _ = read_rerank_spec(model_dir)
    tokenizer = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
    return sum(int(tokenizer.encode_pairs(q, docs).lengths.sum()) for q, docs in work)


def _in_process(model_dir: Path, device: str, work, tokens: int):  # type: ignore[no-untyped-def]
    from vecq.engines.reranker import Reranker

    from .baselines import Rate

    reranker = Reranker.load(model_dir, device=device)
    reranker.warmup()
    for q, docs in work[:5]:
        reranker.score(q, docs)
    start = time.perf_counter()
    for q, docs in work:
        reranker.score(q, docs)
    elapsed = time.perf_counter() - start
    reranker.close()
    n = sum(len(d) for _, d in work)
    return Rate(
        f"vecq Reranker.score in process ({_precision(device)}), a call per query",
        n / elapsed,
        tokens / elapsed,
    )


def _through_redis(model_dir: Path, device: str, work, tokens: int, tmp: Path, latency_requests: int):  # type: ignore[no-untyped-def]
    """(bulk Rate, (p50, p99) ms of one query alone) with one `vecq worker --model` on `device`."""
    from vecq.producer import Client

    from ..embed.server import embedded_redis
    from .baselines import Rate
    from .pipeline import _percentiles, start_worker, wait_workers

    with embedded_redis() as url:
        name = "rerank-bench"
        extra = ("--name", name)
        proc = start_worker(
            url, model_dir, device, tmp / "worker.log", sharing=1, source="--model", extra=extra
        )
        try:
            wait_workers(url, [proc])
            with Client(url) as client:
                _all_at_once(client, work[:10], name)
                start = time.perf_counter()
                _all_at_once(client, work, name)
                elapsed = time.perf_counter() - start
                samples = []
                for i in range(latency_requests):
                    q, docs = work[i % len(work)]
                    t0 = time.perf_counter()
                    client.rerank(q, docs, model=name, top_n=5)
                    samples.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    n = sum(len(d) for _, d in work)
    label = f"vecq rerank through Redis, 1 worker ({_precision(device)}), all queries at once"
    return Rate(label, n / elapsed, tokens / elapsed), _percentiles(samples)


def _all_at_once(client, work, name: str) -> None:  # type: ignore[no-untyped-def]
    jobs = [client.submit(docs, model=name, query=q, lane="bulk") for q, docs in work]
    for job in jobs:
        client.result(job, timeout=600)


def _cross_encoder(model_dir: Path, device: str, work, tokens: int, batch: int):  # type: ignore[no-untyped-def]
    from sentence_transformers import CrossEncoder

    from .baselines import Rate

    model = CrossEncoder(str(model_dir), device=device)
    if device.startswith("cuda"):
        model = model.half()
    pairs = [(q, d) for q, docs in work for d in docs]
    model.predict(pairs[:2000], batch_size=batch, show_progress_bar=False)
    start = time.perf_counter()
    model.predict(pairs, batch_size=batch, show_progress_bar=False)
    elapsed = time.perf_counter() - start
    return Rate(
        f"CrossEncoder.predict {_precision(device)}, batch {batch}, all pairs",
        len(pairs) / elapsed,
        tokens / elapsed,
    )


def _precision(device: str) -> str:
    return "fp16" if device.startswith("cuda") else "fp32"
