"""Blockwise int8 (ORT's MatMulNBits) on CPU: parity and speed against onnx fp32 and ST, one run.

    python benchmarks/nbits_probe.py --texts 1000 --rounds 3 [--json OUT]

Dynamic int8 (`QuantizeLinear` per tensor + `MatMulInteger`) gives a whole activation tensor one
scale, so the [CLS] row's outliers cost every other token its resolution; `MatMulNBits` with
`accuracy_level=4` quantizes activations per row and per block of K instead, and its weights per
block too.  Variants: bits 8 and 4, block sizes, symmetric or not.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def nbits(src: Path, dst: Path, *, bits: int, block: int, symmetric: bool, exclude=()) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=bits,
        block_size=block,
        is_symmetric=symmetric,
        accuracy_level=4,
        nodes_to_exclude=list(exclude),
    )
    q.process()
    q.model.save_model_to_file(str(dst))
    return dst


@click.command()
@click.option("--texts", "n_texts", type=int, default=1000, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--variants", default="8/32/sym,8/32/asym,8/128/sym,4/32/sym,4/32/asym", show_default=True)
@click.option("--speed/--no-speed", default=True)
def main(n_texts: int, rounds: int, json_out: Path | None, variants: str, speed: bool) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    from sentence_transformers import SentenceTransformer

    from vecq.engines.backends.onnx import OnnxEngine
    from vecq.engines.embedder import Embedder, default_model_dir
    from vecq.engines.export import export_onnx, quantize_int8
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
    with tempfile.TemporaryDirectory(prefix="vecq-nbits-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(module, tmp / "fp32.onnx")
        paths = {"onnx fp32": fp32, "dynamic u8s8 (all)": quantize_int8(fp32, tmp / "dyn.onnx")}
        for v in variants.split(","):
            bits, block, sym = v.split("/")
            paths[f"nbits {v}"] = nbits(
                fp32,
                tmp / f"nb-{bits}-{block}-{sym}.onnx",
                bits=int(bits),
                block=int(block),
                symmetric=sym == "sym",
            )
        engines = {
            k: Embedder(
                spec=spec, tokenizer=tok, engine=OnnxEngine(p, shapes=shapes, dim=spec.dim, device="cpu")
            )
            for k, p in paths.items()
        }
        parity = {}
        for name, emb in engines.items():
            v = emb.embed(texts)
            cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
            parity[name] = float(cos.min())
            click.echo(f"{name}: min cos {parity[name]:.5f}")
        rates: dict[str, list[float]] = {}
        if speed:
            st = SentenceTransformer(str(model_dir), device="cpu")
            rates = {"sentence-transformers": [], **{k: [] for k in engines}}
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
    if rates:
        base = max(rates["sentence-transformers"])
        click.echo(
            f"\n{'variant':<28} {'min parity cos':>15} {'texts/s (rounds)':>24} {'× ST best/best':>15}"
        )
        for name, r in rates.items():
            p = f"{parity[name]:.5f}" if name in parity else "—"
            click.echo(f"{name:<28} {p:>15} {' / '.join(f'{x:.0f}' for x in r):>24} {max(r) / base:>14.2f}×")
    if json_out:
        json_out.write_text(json.dumps({"parity_min_cos": parity, "texts_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
