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
from pathlib import Path

import click


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
    from probe_common import DefaultModel, race, ratio_table

    from vecq.engines.export import export_onnx, quantize_int8
    from vecq.worker.corpus import make_corpus

    m = DefaultModel.load()
    with tempfile.TemporaryDirectory(prefix="vecq-nbits-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(m.module, tmp / "fp32.onnx")
        paths = {"onnx fp32": fp32, "dynamic u8s8 (all)": quantize_int8(fp32, tmp / "dyn.onnx")}
        for v in variants.split(","):
            bits, block, sym = v.split("/")
            dst = tmp / f"nb-{bits}-{block}-{sym}.onnx"
            paths[f"nbits {v}"] = nbits(fp32, dst, bits=int(bits), block=int(block), symmetric=sym == "sym")
        parity = {}
        for name, path in paths.items():
            parity[name] = m.parity(path)
            click.echo(f"{name}: min cos {parity[name]:.5f}")
        rates: dict[str, list[float]] = {}
        if speed:
            engines = {k: m.embedder(p) for k, p in paths.items()}
            rates = race(m.model_dir, engines, make_corpus(n_texts, seed=0), rounds)
            for e in engines.values():
                e.close()
    if rates:
        ratio_table(rates, parity, width=28)
    if json_out:
        json_out.write_text(json.dumps({"parity_min_cos": parity, "texts_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
