"""SmoothQuant-style channel smoothing before dynamic int8, with and without the [CLS] row apart:
parity on the parity texts, and speed against onnx fp32 and `SentenceTransformer.encode`.

    python benchmarks/smoothquant_probe.py --alphas 0.4,0.5,0.6 [--speed]

The smoothing is `vecq.engines.export.smooth_activations` (its docstring says how and why), with
per-channel activation maxima from the calibration texts; `vecq build --precision int8` uses it
with α = 0.5.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--alphas", default="0.4,0.5,0.6", show_default=True)
@click.option("--speed/--no-speed", default=False, help="Also time the α=0.5 variants (1000 texts).")
@click.option("--rounds", type=int, default=3, show_default=True)
def main(alphas: str, speed: bool, rounds: int) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    from vecq.engines.backends.onnx import OnnxEngine
    from vecq.engines.embedder import Embedder, default_model_dir
    from vecq.engines.export import activation_max, export_onnx, quantize_int8, smooth_activations, split_cls
    from vecq.engines.parity import calibration_texts, parity_texts, reference_vectors
    from vecq.engines.pooled import load_pooled
    from vecq.engines.shapes import ShapeSet
    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer

    model_dir = default_model_dir()
    spec = read_spec(model_dir)
    tok = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
    shapes = ShapeSet.for_cpu(max_seq_len=spec.max_seq_len)
    module = load_pooled(model_dir, spec, attn_implementation="eager")
    texts = parity_texts()
    ref = reference_vectors(module, tok, texts)

    def embedder(path: Path) -> Embedder:
        return Embedder(
            spec=spec, tokenizer=tok, engine=OnnxEngine(path, shapes=shapes, dim=spec.dim, device="cpu")
        )

    def parity(path: Path) -> float:
        with embedder(path) as e:
            v = e.embed(texts)
        return float(((v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)).min())

    with tempfile.TemporaryDirectory(prefix="vecq-sq-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(module, tmp / "fp32.onnx")
        stats = activation_max(fp32, tok, calibration_texts(), tmp)
        click.echo(f"{'α':>4} {'int8 rr':>9} {'[CLS] apart, int8':>18} {'[CLS] apart, int8 rr':>21}")
        for alpha in [float(a) for a in alphas.split(",")]:
            sm = smooth_activations(fp32, tmp / f"sm-{alpha}.onnx", stats, alpha=alpha)
            split_cls(sm, tmp / "split.onnx")
            row = [
                parity(quantize_int8(sm, tmp / "a.onnx", reduce_range=True)),
                parity(quantize_int8(tmp / "split.onnx", tmp / "b.onnx")),
                parity(quantize_int8(tmp / "split.onnx", tmp / "c.onnx", reduce_range=True)),
            ]
            click.echo(f"{alpha:>4} {row[0]:>9.5f} {row[1]:>18.5f} {row[2]:>21.5f}")
        if not speed:
            return
        from sentence_transformers import SentenceTransformer

        from vecq.worker.corpus import make_corpus

        corpus = make_corpus(1000, seed=0)
        split_cls(smooth_activations(fp32, tmp / "sm.onnx", stats), tmp / "sm-split.onnx")
        split_cls(fp32, tmp / "split.onnx")
        paths = {
            "onnx fp32": fp32,
            "all int8 (u8s8)": quantize_int8(fp32, tmp / "all.onnx"),
            "[CLS] apart rr": quantize_int8(tmp / "split.onnx", tmp / "s.onnx", reduce_range=True),
            "smooth 0.5 + [CLS] apart rr": quantize_int8(
                tmp / "sm-split.onnx", tmp / "ss.onnx", reduce_range=True
            ),
        }
        engines = {k: embedder(p) for k, p in paths.items()}
        st = SentenceTransformer(str(model_dir), device="cpu")
        rates: dict[str, list[float]] = {"sentence-transformers": [], **{k: [] for k in engines}}
        st.encode(corpus[:50], batch_size=32)
        for e in engines.values():
            e.embed(corpus[:50])
        for rnd in range(rounds):
            t0 = time.perf_counter()
            st.encode(corpus, batch_size=32)
            rates["sentence-transformers"].append(len(corpus) / (time.perf_counter() - t0))
            for k, e in engines.items():
                t0 = time.perf_counter()
                e.embed(corpus)
                rates[k].append(len(corpus) / (time.perf_counter() - t0))
            click.echo(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
        base = max(rates["sentence-transformers"])
        for k, v in rates.items():
            click.echo(f"{k:<30} {' / '.join(f'{x:.0f}' for x in v):>20} {max(v) / base:>6.2f}× ST best/best")


if __name__ == "__main__":
    main()
