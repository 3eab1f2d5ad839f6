"""`vecq bench long`: a base-size XLM-RoBERTa (or ModernBERT) on texts of 512 and 8,192 tokens.

bge-m3 and multilingual-e5 read up to 8,192 tokens, and RAG corpora are cut into passages of
hundreds to thousands of tokens, so the corpus benchmark's 53-token texts say little about them.
Each length gets its own model (random weights, XLM-R base: 12 × 768, 250,002-token embedding
table, 8,194 positions; `max_seq_length` the length measured) and texts long enough to be cut at
it, so every text is exactly that many tokens.  Rows: the engine alone, `Embedder.embed`, bulk
through Redis with one worker, and sentence-transformers fp16 on the same texts.
`--architecture modernbert`: ModernBERT base instead (22 × 768, GeGLU 1,152, a 50,368-token
table, global attention every third layer, the others a 128-token window, 8,192 positions).

The tokenizer is vecq's small trained Unigram (XLM-R's kind, ~1,500 pieces, ids within the full
table): texts are cut at the same token count whatever the vocabulary, so the work per text is
XLM-R's.  The share of the dense ceiling counts matmul FLOPs only; at 8,192 tokens the attention
scores add ~1.8× that, so the share reads low there by design.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import click

_NAMES = {"xlm-roberta": "XLM-RoBERTa", "modernbert": "ModernBERT"}
#: (texts, bulk chunk size, bulk window in texts) per length: ~4M tokens a round, Redis kept small.
_SIZES = {512: (8000, 64, 4096), 8192: (480, 4, 256)}


def long_model(root: Path, max_len: int, architecture: str = "xlm-roberta") -> Path:
    """A base-size random XLM-RoBERTa (or ModernBERT) in the sentence-transformers layout,
    reading `max_len`."""
    from vecq.engines.random_model import write_random_encoder

    if architecture == "modernbert":
        return write_random_encoder(
            root, model_type="modernbert", hidden=768, layers=22, heads=12, max_positions=8192,
            max_seq_length=max_len, vocab_size=50368, intermediate_size=1152, global_attn_every_n_layers=3,
            local_attention=128,
        )  # fmt: skip
    return write_random_encoder(
        root, model_type="xlm-roberta", hidden=768, layers=12, heads=12, max_positions=8192,
        max_seq_length=max_len, vocab_size=250002,
    )  # fmt: skip


def long_texts(n: int, max_len: int, model_dir: Path, *, seed: int = 3) -> list[str]:
    """`n` different texts of corpus sentences, each over `max_len` tokens (so cut at it)."""
    from .baselines import real_tokens
    from .corpus import sentence

    rng = random.Random(seed)
    sample = [sentence(rng) for _ in range(200)]
    per_sentence = sum(real_tokens(model_dir, sample)) / len(sample)
    k = int(1.3 * max_len / max(1.0, per_sentence - 2)) + 1
    return [" ".join(sentence(rng) for _ in range(k)) for _ in range(n)]


@click.command("long")
@click.option("--device", default="cuda", show_default=True)
@click.option("--lengths", default="512,8192", show_default=True, help="Token lengths, e.g. 512,8192.")
@click.option("--st-batch", type=int, default=16, show_default=True, help="sentence-transformers batch.")
@click.option("--texts", "n_texts", type=int, default=0, help="Texts per length (0: ~4M tokens' worth).")
@click.option("--architecture", type=click.Choice(list(_NAMES)), default="xlm-roberta", show_default=True)
def long_bench(device: str, lengths: str, st_batch: int, n_texts: int, architecture: str) -> None:
    """A base-size XLM-RoBERTa at long inputs: engine, Embedder, bulk through Redis, ST fp16."""
    for max_len in [int(x) for x in lengths.split(",") if x.strip()]:
        with tempfile.TemporaryDirectory(prefix="vecq-long-") as tmp:
            _one_length(device, max_len, st_batch, Path(tmp), n_texts=n_texts, architecture=architecture)


def _one_length(
    device: str, max_len: int, st_batch: int, tmp: Path, *, n_texts: int, architecture: str
) -> None:
    from vecq.engines.build import build_bundle

    from . import baselines
    from .pipeline import engine_rates, print_rates

    n, chunk, window = _SIZES.get(max_len, (max(64, 4_000_000 // max_len), 16, 1024))
    n = n_texts or n
    model_dir = long_model(tmp / f"{architecture}-{max_len}", max_len, architecture)
    texts = long_texts(n, max_len, model_dir)
    lengths = baselines.real_tokens(model_dir, texts)
    tokens = sum(lengths)
    cuda = device.startswith("cuda")
    bundle = tmp / "bundle"
    build_bundle(
        model_dir, bundle, backend="torch", device="cuda" if cuda else "cpu",
        precision="fp16" if cuda else "fp32", progress=click.echo,
    )  # fmt: skip
    rates = engine_rates(bundle, device, texts, tokens)
    rates.append(_bulk_round(bundle, device, texts, tokens, tmp, chunk=chunk, window=window))
    rates.append(baselines.sentence_transformers_rate(model_dir, device, texts, tokens, st_batch))
    ceiling = baselines.matmul_tflops(device) * 1e12 / baselines.flops_per_token(model_dir)
    title = (
        f"{_NAMES[architecture]} base (random) at {max_len:,} tokens on {device}: {n:,} texts of "
        f"{tokens / n:,.0f} tokens; dense ceiling {ceiling / 1e6:.2f}M tokens/s"
    )
    print_rates(title, rates, ceiling)


def _bulk_round(
    bundle: Path, device: str, texts: list[str], tokens: int, tmp: Path, *, chunk: int, window: int
):  # type: ignore[no-untyped-def]
    from ..embed.server import embedded_redis
    from .baselines import Rate
    from .pipeline import bulk_rate, start_worker, wait_workers

    with embedded_redis() as url:
        proc = start_worker(url, bundle, device, tmp / "worker.log", sharing=1)
        try:
            wait_workers(url, [proc])
            name = _served(bundle)
            bulk_rate(url, name, texts[: max(8, len(texts) // 10)], "warm", chunk_size=chunk, window=window)
            start = time.perf_counter()
            rate = bulk_rate(url, name, texts, "bulk", chunk_size=chunk, window=window)
            click.echo(f"  bulk round: {time.perf_counter() - start:.1f} s")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return Rate("vecq torch bulk through Redis, 1 worker", rate, rate * tokens / len(texts))


def _served(bundle: Path) -> str:
    from vecq.engines.bundle import read_manifest

    return read_manifest(bundle).name
