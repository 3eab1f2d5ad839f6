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
from pathlib import Path

import click


@click.command()
@click.option("--texts", "n_texts", type=int, default=1000, show_default=True)
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def main(n_texts: int, rounds: int, json_out: Path | None) -> None:
    from probe_common import DefaultModel, race, ratio_table

    from vecq.engines.export import export_onnx, quantize_int8, split_cls
    from vecq.worker.corpus import make_corpus

    m = DefaultModel.load()
    with tempfile.TemporaryDirectory(prefix="vecq-int8-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(m.module, tmp / "fp32.onnx")
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
        parity = {name: m.parity(path) for name, path in variants.items()}
        engines = {k: m.embedder(p) for k, p in variants.items()}
        rates = race(m.model_dir, engines, make_corpus(n_texts, seed=0), rounds)
        for emb in engines.values():
            emb.close()
    ratio_table(rates, parity)
    if json_out:
        json_out.write_text(json.dumps({"parity_min_cos": parity, "texts_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
