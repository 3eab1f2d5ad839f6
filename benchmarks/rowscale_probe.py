"""The [CLS] row scaled down instead of split off, before dynamic int8: parity and speed against
the split build, all-int8, onnx fp32 and `SentenceTransformer.encode`, in one run.

    python benchmarks/rowscale_probe.py --no-speed      # parity only
    python benchmarks/rowscale_probe.py --texts 1000 --rounds 3

`split_cls` (what `vecq build --precision int8` does) gives the [CLS] row its own activation
scale by slicing every weight MatMul's input in two and concatenating the outputs; those
Slices and Concats, and the bias Adds they keep from fusing, are ~17 % of the int8 graph's
kernel time (BENCHMARKS.md).  Here the [CLS] row is instead multiplied by `1/c` before the
MatMul and its output row by `c` after it -- exact in fp32, two elementwise Muls and no copies
-- with `c` per MatMul input from calibration texts (the [CLS] row's max |x| over the other
rows' max), so that one shared scale serves both.

Result (2026-11-28, BENCHMARKS.md): it does not work.  The [CLS] row's max is only 0.1-4x the
other rows' on this model, and scaling it gives a worst parity cosine of 0.971-0.972 with every
MatMul int8 (7- or 8-bit weights), no better than plain all-int8 (0.969), against 0.986 for the
split: the [CLS] row needs its own zero point and range, not just a smaller magnitude.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np


def row_max(path: Path, tokenizer, texts: Sequence[str], work: Path) -> dict[str, tuple[float, float]]:
    """Per weight-MatMul input: (max |x| of the [CLS] row, max |x| of the other rows) over `texts`."""
    from probe_common import matmul_inputs

    out: dict[str, tuple[float, float]] = {}
    for values in matmul_inputs(path, tokenizer, texts, work):
        for x, v in values.items():
            a = np.abs(v[0])
            cls, rest = float(a[0].max()), float(a[1:].max()) if len(a) > 1 else 0.0
            old = out.get(x, (0.0, 0.0))
            out[x] = (max(old[0], cls), max(rest, old[1]))
    return out


def scale_cls_rows(
    src: Path, dst: Path, maxes: dict[str, tuple[float, float]], *, max_len: int = 512
) -> Path:
    """Each weight MatMul `X·W` becomes `((X·r)·W)·(1/r)`, with `r` = 1/c on the [CLS] row and 1
    elsewhere (one [max_len, 1] constant per input, sliced to the sequence length once)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    weights = {i.name for i in g.initializer}
    ids = g.input[0].name
    g.initializer.extend(
        [
            helper.make_tensor("rs_zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("rs_one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("rs_two", TensorProto.INT64, [1], [2]),
        ]
    )
    head = [
        helper.make_node("Shape", [ids], ["rs_shape"], name="rs_shape"),
        helper.make_node("Slice", ["rs_shape", "rs_one", "rs_two", "rs_zero"], ["rs_len"], name="rs_len"),
    ]
    made: dict[str, tuple[str, str]] = {}
    nodes = []
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.input[0] not in maxes:
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        cls, rest = maxes[x]
        c = min(1e3, max(1e-3, cls / max(rest, 1e-6)))
        if x not in made:
            down, up = np.ones((max_len, 1), np.float32), np.ones((max_len, 1), np.float32)
            down[0], up[0] = 1.0 / c, c
            tag = f"rs{len(made)}"
            for kind, arr in (("down", down), ("up", up)):
                g.initializer.append(numpy_helper.from_array(arr, f"{tag}_{kind}_full"))
            for kind in ("down", "up"):
                head.append(
                    helper.make_node(
                        "Slice",
                        [f"{tag}_{kind}_full", "rs_zero", "rs_len", "rs_zero"],
                        [f"{tag}_{kind}"],
                        name=f"{tag}_{kind}_slice",
                    )
                )
            nodes.append(helper.make_node("Mul", [x, f"{tag}_down"], [f"{tag}_x"], name=f"{tag}_mul_x"))
            made[x] = (f"{tag}_x", f"{tag}_up")
        xs, up = made[x]
        nodes += [
            helper.make_node("MatMul", [xs, node.input[1]], [f"{node.name}_ys"], name=node.name),
            helper.make_node("Mul", [f"{node.name}_ys", up], [y], name=f"{node.name}_mul_y"),
        ]
    del g.node[:]
    g.node.extend(head + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


@click.command()
@click.option("--texts", "n_texts", type=int, default=1000, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--speed/--no-speed", default=True)
def main(n_texts: int, rounds: int, speed: bool) -> None:
    from probe_common import DefaultModel, race, ratio_table

    from vecq.engines.export import export_onnx, quantize_int8, split_cls
    from vecq.engines.parity import calibration_texts
    from vecq.worker.corpus import make_corpus

    m = DefaultModel.load()
    with tempfile.TemporaryDirectory(prefix="vecq-rowscale-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(m.module, tmp / "fp32.onnx")
        maxes = row_max(fp32, m.tokenizer, calibration_texts(), tmp)
        ratios = sorted(c / max(r, 1e-6) for c, r in maxes.values())
        click.echo(f"[CLS]/rest max ratio over {len(maxes)} inputs: {', '.join(f'{r:.1f}' for r in ratios)}")
        scaled = scale_cls_rows(fp32, tmp / "scaled.onnx", maxes)
        split_cls(fp32, tmp / "split.onnx")
        variants = {
            "onnx fp32": fp32,
            "scaled fp32 (exactness)": scaled,
            "u8s8 (all 36 int8)": quantize_int8(fp32, tmp / "u8s8.onnx"),
            "cls apart, 7-bit": quantize_int8(tmp / "split.onnx", tmp / "split-rr.onnx", reduce_range=True),
            "cls scaled, 7-bit": quantize_int8(scaled, tmp / "scaled-rr.onnx", reduce_range=True),
            "cls scaled, 8-bit": quantize_int8(scaled, tmp / "scaled-u8s8.onnx"),
        }
        parity = {name: m.parity(path) for name, path in variants.items()}
        for k, v in parity.items():
            click.echo(f"parity {k}: {v:.5f}")
        if not speed:
            return
        engines = {k: m.embedder(p) for k, p in variants.items() if k != "scaled fp32 (exactness)"}
        rates = race(m.model_dir, engines, make_corpus(n_texts, seed=0), rounds)
        for emb in engines.values():
            emb.close()
    ratio_table(rates, parity)


if __name__ == "__main__":
    main()
