"""`vecq bench engines`: texts/s of vecq's backends against `SentenceTransformer.encode`.

Same texts (`corpus.make_corpus`, deterministic), same process, same run: sentence-transformers
(batch 32, its default), vecq torch, vecq onnx fp32 and, with `--int8`, onnx int8.  Each is
warmed up on a few texts, then timed over the whole corpus, `--rounds` times in turn; the best
round counts, which is the fairest figure on a machine shared with other work.  Tokenization is
included for everyone.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np


@dataclass
class Row:
    """One contender: how to embed, and what it measured."""

    name: str
    embed: Callable[[list[str]], np.ndarray]
    rates: list[float]
    vectors: np.ndarray | None = None
    note: str = ""


@click.command()
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--texts", "n_texts", type=int, default=4000, show_default=True, help="Corpus size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Corpus seed.")
@click.option("--rounds", type=int, default=2, show_default=True, help="Timed passes each; best counts.")
@click.option("--int8", is_flag=True, help="Also build and time an int8 ONNX bundle (CPU).")
@click.option("--model", default="default", show_default=True, help="Model dir, or `default`.")
@click.option(
    "--seed-workload", is_flag=True, help="The seed write-up's own benchmark (GPU), baseline and vecq."
)
@click.option(
    "--table", "shape_table", is_flag=True, help="seq/s per engine × batch at seq 128 and 200 (GPU)."
)
def engines(
    device: str, n_texts: int, seed: int, rounds: int, int8: bool, model: str, seed_workload: bool,
    shape_table: bool,
) -> None:  # fmt: skip
    """Engine throughput vs sentence-transformers on a realistic corpus."""
    from rich.console import Console

    if seed_workload or shape_table:
        from .gpu import run_gpu_tables

        run_gpu_tables(device, seed=seed_workload, shape_table=shape_table, model=model)
        return
    from .corpus import make_corpus

    console = Console(log_path=False, width=max(120, Console().width))
    texts = make_corpus(n_texts, seed=seed)
    with tempfile.TemporaryDirectory(prefix="vecq-bench-") as tmp:
        rows = contenders(model, device, Path(tmp), int8=int8, say=console.log)
        for r in range(rounds):
            for row in rows:
                rate, vectors = time_embed(row.embed, texts)
                row.rates.append(rate)
                row.vectors = vectors
                console.log(f"round {r + 1}: {row.name} {rate:,.0f} texts/s")
    console.print(table(rows, n_texts=n_texts, device=device))


def contenders(model: str, device: str, tmp: Path, *, int8: bool, say: Callable[[str], None]) -> list[Row]:
    """sentence-transformers first (the baseline), then vecq's backends on the same model."""
    from sentence_transformers import SentenceTransformer

    from vecq.engines import Embedder, default_model_dir
    from vecq.engines.build import build_bundle
    from vecq.engines.bundle import read_manifest

    model_dir = default_model_dir() if model == "default" else Path(model)
    st = SentenceTransformer(str(model_dir), device=device)
    rows = [Row("sentence-transformers", lambda t: st.encode(t, batch_size=32, convert_to_numpy=True), [])]
    rows.append(Row("vecq torch fp32", Embedder.load(model_dir, backend="torch", device=device).embed, []))
    kind = "cpu" if device == "cpu" else "cuda"
    precisions = ["fp32"] + (["int8"] if int8 else []) + (["fp16"] if kind == "cuda" else [])
    for precision in precisions:
        say(f"building the onnx {precision} bundle")
        out = tmp / f"onnx-{precision}"
        build_bundle(model_dir, out, device=kind, precision=precision, progress=say)
        manifest = read_manifest(out)
        note = f"parity min {manifest.parity.min_cosine:.5f}; {manifest.graph}"
        rows.append(Row(f"vecq onnx {precision}", Embedder.load(out, device=device).embed, [], note=note))
    return rows


def time_embed(embed: Callable[[list[str]], np.ndarray], texts: Sequence[str]) -> tuple[float, np.ndarray]:
    """Texts per second of one pass over `texts` (after a short warm-up), and the vectors."""
    embed(list(texts[:64]))
    start = time.perf_counter()
    vectors = embed(list(texts))
    return len(texts) / (time.perf_counter() - start), np.asarray(vectors, dtype=np.float32)


def table(rows: list[Row], *, n_texts: int, device: str):
    """The rich table: best texts/s, ratio to sentence-transformers, agreement with its vectors."""
    from rich.table import Table

    from vecq.engines.parity import cosines

    base = rows[0]
    best_base = max(base.rates)
    out = Table(title=f"engines on {device}: {n_texts} texts, best of {len(base.rates)} rounds")
    for column in ("backend", "texts/s", "× sentence-transformers", "min cos to ST", "note"):
        out.add_column(column, justify="left" if column in ("backend", "note") else "right")
    for row in rows:
        cos = cosines(row.vectors, base.vectors) if row.vectors is not None else np.array([np.nan])
        best = max(row.rates)
        out.add_row(row.name, f"{best:,.0f}", f"{best / best_base:.2f}×", f"{cos.min():.5f}", row.note)
    return out
