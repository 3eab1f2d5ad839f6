"""Why int8 on this CPU stops short of 2× sentence-transformers (issue 2): parity and speed of the
int8 variants tried, against onnx fp32 and `SentenceTransformer.encode`, in one run.

    python benchmarks/int8_probe.py --texts 1000 --rounds 2 [--json OUT]

Variants (all dynamic int8, per-channel weights, every weight MatMul unless said):

- `u8s8`: ORT's default (uint8 activations × int8 weights), one scale per activation tensor;
- `u8s8 reduce_range`: 7-bit weights, which avoids the int16 saturation of AVX2's
  `vpmaddubsw` (u8 × s8 pairs summed in 16 bits) on machines without VNNI;
- `cls apart`: every weight MatMul's input split into the [CLS] row and the rest, each
  quantized with its own scale (the [CLS] row carries the largest activations, so one shared
  scale leaves the other tokens a few levels only); a torch fake-quant model of it gives min
  cosine 0.992 without saturation;
- `u8u8`: uint8 weights (no `vpmaddubsw`, no saturation, but a slower kernel on AVX2).

`vecq build --precision int8` itself (the sensitivity ladder, 22 of 36 MatMuls int8 on
all-MiniLM-L6-v2) is measured by `vecq bench engines --int8`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--texts", "n_texts", type=int, default=1000, show_default=True)
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def main(n_texts: int, rounds: int, json_out: Path | None) -> None:
    from sentence_transformers import SentenceTransformer

    from vecq.engines.backends.onnx import OnnxEngine
    from vecq.engines.embedder import Embedder, default_model_dir
    from vecq.engines.export import export_onnx, quantize_int8, split_cls
    from vecq.engines.parity import parity_texts, reference_vectors
    from vecq.engines.pooled import load_pooled
    from vecq.engines.shapes import ShapeSet
    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer
    from vecq.worker.corpus import make_corpus

    model_dir = default_model_dir()
    spec = read_spec(model_dir)
    tok = TextTokenizer.from_dir(model_dir, max_seq_len=spec.max_seq_len)
    shapes = ShapeSet.for_cpu(max_seq_len=spec.max_seq_len)
    module = load_pooled(model_dir, spec, attn_implementation="eager")
    texts = parity_texts()
    ref = reference_vectors(module, tok, texts)
    corpus = make_corpus(n_texts, seed=0)
    with tempfile.TemporaryDirectory(prefix="vecq-int8-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(module, tmp / "fp32.onnx")
        split_cls(fp32, tmp / "split.onnx")
        variants = {
            "onnx fp32": fp32,
            "u8s8 (all 36 int8)": quantize_int8(fp32, tmp / "u8s8.onnx"),
            "u8s8 reduce_range": quantize_int8(fp32, tmp / "rr.onnx", reduce_range=True),
            "cls apart, u8s8 reduce_range": quantize_int8(
                tmp / "split.onnx", tmp / "split-rr.onnx", reduce_range=True
            ),
            "cls apart, u8u8": quantize_int8(
                tmp / "split.onnx", tmp / "split-u8.onnx", unsigned_weights=True
            ),
        }
        engines = {
            k: Embedder(
                spec=spec, tokenizer=tok, engine=OnnxEngine(p, shapes=shapes, dim=spec.dim, device="cpu")
            )
            for k, p in variants.items()
        }
        parity = {}
        for name, emb in engines.items():
            v = emb.embed(texts)
            cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
            parity[name] = float(cos.min())
        st = SentenceTransformer(str(model_dir), device="cpu")
        rates: dict[str, list[float]] = {"sentence-transformers": [], **{k: [] for k in engines}}
        st.encode(corpus[:50], batch_size=32)
        for emb in engines.values():
            emb.embed(corpus[:50])
        for rnd in range(rounds):
            t0 = time.perf_counter()
            st.encode(corpus, batch_size=32)
            rates["sentence-transformers"].append(n_texts / (time.perf_counter() - t0))
            for name, emb in engines.items():
                t0 = time.perf_counter()
                emb.embed(corpus)
                rates[name].append(n_texts / (time.perf_counter() - t0))
            click.echo(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()))
        for emb in engines.values():
            emb.close()
    base = max(rates["sentence-transformers"])
    click.echo(f"\n{'variant':<32} {'min parity cos':>15} {'texts/s (rounds)':>22} {'× ST best/best':>15}")
    for name, r in rates.items():
        p = f"{parity[name]:.5f}" if name in parity else "—"
        per = " / ".join(f"{x:.0f}" for x in r)
        click.echo(f"{name:<32} {p:>15} {per:>22} {max(r) / base:>14.2f}×")
    if json_out:
        json_out.write_text(json.dumps({"parity_min_cos": parity, "texts_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
