"""What the int8 probes share: the default model loaded once with its parity reference, and a
race of `SentenceTransformer.encode` against vecq engines on one corpus, rounds interleaved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np


@dataclass
class DefaultModel:
    """all-MiniLM-L6-v2 as the probes use it: CPU shapes, eager torch module, parity reference."""

    model_dir: Path
    spec: object
    tokenizer: object
    shapes: object
    module: object
    texts: list[str]
    reference: np.ndarray

    @classmethod
    def load(cls) -> DefaultModel:
        from vecq.engines.embedder import default_model_dir
        from vecq.engines.parity import parity_texts, reference_vectors
        from vecq.engines.pooled import load_pooled
        from vecq.engines.shapes import ShapeSet
        from vecq.engines.spec import read_spec
        from vecq.engines.tokenizer import TextTokenizer

        model_dir = default_model_dir()
        spec = read_spec(model_dir)
        tok = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
        module = load_pooled(model_dir, spec, attn_implementation="eager")
        texts = parity_texts()
        shapes = ShapeSet.for_cpu(max_seq_len=spec.max_seq_len)
        return cls(model_dir, spec, tok, shapes, module, texts, reference_vectors(module, tok, texts))

    def embedder(self, path: Path):
        """An `Embedder` over the ONNX graph at `path`, on CPU, with vecq's own shapes."""
        from vecq.engines.backends.onnx import OnnxEngine
        from vecq.engines.embedder import Embedder

        engine = OnnxEngine(path, shapes=self.shapes, dim=self.spec.dim, device="cpu")
        return Embedder(spec=self.spec, tokenizer=self.tokenizer, engine=engine)

    def parity(self, path: Path) -> float:
        """Worst cosine over the parity texts against the torch fp32 reference."""
        with self.embedder(path) as e:
            v = e.embed(self.texts)
        ref = self.reference
        return float(((v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)).min())


def race(model_dir: Path, engines: dict, corpus: list[str], rounds: int) -> dict[str, list[float]]:
    """texts/s per round of sentence-transformers (`batch_size=32`) and each engine, interleaved
    so that every round sees the machine in the same state; one untimed warm-up pass each."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    runners = {"sentence-transformers": lambda: st.encode(corpus, batch_size=32)}
    runners |= {name: (lambda e=e: e.embed(corpus)) for name, e in engines.items()}
    st.encode(corpus[:50], batch_size=32)
    for e in engines.values():
        e.embed(corpus[:50])
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for rnd in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            rates[name].append(len(corpus) / (time.perf_counter() - t0))
        click.echo(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
    return rates


def ratio_table(rates: dict[str, list[float]], parity: dict[str, float], *, width: int = 32) -> None:
    """Each variant's parity, texts/s per round and best over sentence-transformers' best."""
    base = max(rates["sentence-transformers"])
    click.echo(
        f"\n{'variant':<{width}} {'min parity cos':>15} {'texts/s (rounds)':>24} {'× ST best/best':>15}"
    )
    for name, r in rates.items():
        p = f"{parity[name]:.5f}" if name in parity else "—"
        click.echo(f"{name:<{width}} {p:>15} {' / '.join(f'{x:.0f}' for x in r):>24} {max(r) / base:>14.2f}×")
