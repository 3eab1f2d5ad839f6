"""`vecq bench embed`: the whole `vecq embed` command on CPU against `SentenceTransformer.encode`.

What a user would compare: one corpus file in, one vector file out.  The vecq side is the embedded
run end to end -- private server started, worker loaded, file read, texts through Redis in bulk
jobs, vectors written, everything stopped -- in this process, with warm caches (the ONNX bundle
is built, and one untimed run done, before timing).  sentence-transformers encodes the same
texts, already in memory, in the same rounds.  Rounds alternate between contenders and every
round's ratio is reported: on a shared machine the same-round ratio is the figure to trust.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np


@dataclass
class Contender:
    """One way to embed the corpus, timed once per round."""

    name: str
    run: Callable[[], np.ndarray]
    rates: list[float] = field(default_factory=list)
    vectors: np.ndarray | None = None


@click.command("embed")
@click.option("--texts", "n_texts", type=int, default=4000, show_default=True, help="Corpus size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Corpus seed.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Timed passes each, interleaved.")
@click.option("--int8", is_flag=True, help="Also time `vecq embed --precision int8`.")
@click.option("--st-batch-size", type=int, default=32, show_default=True, help="encode(batch_size=...).")
def embed_bench(n_texts: int, seed: int, rounds: int, int8: bool, st_batch_size: int) -> None:
    """`vecq embed` (embedded, default model, CPU) vs sentence-transformers, texts/s and ratio."""
    from rich.console import Console

    from .corpus import make_corpus

    console = Console(log_path=False, width=max(120, Console().width))
    texts = make_corpus(n_texts, seed=seed)
    with tempfile.TemporaryDirectory(prefix="vecq-bench-embed-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        write_txt(corpus, texts)
        contenders = [sentence_transformers(texts, st_batch_size)]
        for precision in ["fp32"] + (["int8"] if int8 else []):
            console.log(f"warming vecq embed {precision} (builds the bundle once if not cached)")
            contenders.append(vecq_embed(corpus, Path(tmp), precision))
            contenders[-1].run()  # untimed: bundle cache, imports, first session
        for r in range(rounds):
            for c in contenders:
                start = time.perf_counter()
                c.vectors = c.run()
                c.rates.append(n_texts / (time.perf_counter() - start))
                console.log(f"round {r + 1}: {c.name} {c.rates[-1]:,.1f} texts/s")
    console.print(table(contenders, n_texts=n_texts))


def write_txt(path: Path, texts: list[str]) -> None:
    """One text per line (what `vecq embed` reads from .txt); the corpus has no newlines."""
    assert not any("\n" in t or "\r" in t for t in texts), "corpus text with a newline (vecq bug)"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")


def sentence_transformers(texts: list[str], batch_size: int) -> Contender:
    from sentence_transformers import SentenceTransformer

    from vecq.engines import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    model.encode(texts[:64], batch_size=batch_size)

    def run() -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True), np.float32)

    return Contender(f"sentence-transformers (batch {batch_size})", run)


def vecq_embed(corpus: Path, tmp: Path, precision: str) -> Contender:
    """The embedded `vecq embed CORPUS --out OUT [--precision P]`, a fresh OUT each time (an old
    one would be resumed, not recomputed)."""
    from ..embed import EmbedSettings, embed_file

    out = tmp / f"out-{precision}.npy"

    def run() -> np.ndarray:
        out.unlink(missing_ok=True)
        shutil.rmtree(out.with_name(out.name + ".vecq-partial"), ignore_errors=True)
        report = embed_file(EmbedSettings(input=corpus, out=out, precision=precision, progress=False))
        assert report.chunks_resumed == 0, "a timed run resumed an earlier one (bench bug)"
        return np.load(out)

    return Contender(f"vecq embed {precision}", run)


def table(contenders: list[Contender], *, n_texts: int):
    """Best texts/s, ratio of bests, each round's ratio, and min cosine to sentence-transformers."""
    from rich.table import Table

    from vecq.engines.parity import cosines

    base = contenders[0]
    out = Table(title=f"vecq embed vs sentence-transformers, CPU: {n_texts} texts, {len(base.rates)} rounds")
    for column in ("run", "texts/s per round", "best", "× ST (best)", "× ST per round", "min cos to ST"):
        out.add_column(column, justify="left" if column == "run" else "right")
    for c in contenders:
        per_round = [a / b for a, b in zip(c.rates, base.rates, strict=True)]
        cos = cosines(c.vectors, base.vectors) if c.vectors is not None else np.array([np.nan])
        out.add_row(
            c.name,
            " / ".join(f"{r:,.0f}" for r in c.rates),
            f"{max(c.rates):,.0f}",
            f"{max(c.rates) / max(base.rates):.2f}×",
            " / ".join(f"{r:.2f}" for r in per_round),
            f"{cos.min():.5f}",
        )
    return out
