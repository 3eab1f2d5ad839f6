"""SmoothQuant-style channel smoothing before dynamic int8, with and without the [CLS] row apart:
parity on the parity texts, and speed against onnx fp32 and `SentenceTransformer.encode`.

    python benchmarks/smoothquant_probe.py --alphas 0.4,0.5,0.6 [--speed]

Not used by `vecq build`: with α = 0.5 it passes parity on the 60 parity texts with all 36
MatMuls int8 (0.9916), but over the 2,000-text corpus of `vecq bench embed` the worst cosine to
sentence-transformers fell to 0.9894 (the build it would have replaced: 0.9955), for ~5 % more
speed (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np


def activation_max(path: Path, tokenizer, texts: Sequence[str], work: Path) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every weight MatMul's input, over `texts`."""
    from probe_common import matmul_inputs

    out: dict[str, np.ndarray] = {}
    for values in matmul_inputs(path, tokenizer, texts, work):
        for x, v in values.items():
            m = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            out[x] = m if x not in out else np.maximum(out[x], m)
    return out


def smooth_activations(src: Path, dst: Path, act_max: dict[str, np.ndarray], *, alpha: float = 0.5) -> Path:
    """SmoothQuant's channel smoothing: each weight MatMul `X·W` becomes
    `(X·diag(1/s))·(diag(s)·W)`, exact in fp32, with `s_j = max|X_j|^α / max|W_j|^(1-α)`.

    Why: a few hidden channels carry activations far larger than the rest, and dynamic int8
    gives the whole tensor one scale; shifting part of each such channel's range into the
    (per-channel quantized) weights leaves the other channels more levels.  Together with the
    [CLS] row apart (`split_cls`) it lets all 36 MatMuls of all-MiniLM-L6-v2 run int8 at parity
    0.9916, where the [CLS] row apart alone reached 0.986 (BENCHMARKS.md,
    `benchmarks/smoothquant_probe.py`).  BERT normalizes after the residual add, so `1/s` cannot
    be folded into the LayerNorm as in pre-LN models: it is one `Mul` per MatMul input (Q, K
    and V, reading one input, share one `s`).
    """
    import onnx
    from onnx import helper, numpy_helper
    from probe_common import weight_matmuls

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list] = {}
    for n in weight_matmuls(model):
        groups.setdefault(n.input[0], []).append(n)
    nodes = []
    for node in model.graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type == "MatMul" and x in groups:
            group = groups.pop(x)
            w_max = np.max([np.abs(numpy_helper.to_array(inits[n.input[1]])).max(1) for n in group], axis=0)
            s = np.maximum(act_max[x], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
            inverse = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}_smooth")
            model.graph.initializer.append(inverse)
            nodes.append(helper.make_node("Mul", [x, f"{x}_smooth"], [f"{x}_smoothed"], name=f"{x}_smooth"))
            for n in group:
                w = numpy_helper.to_array(inits[n.input[1]]) * s[:, None]
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), n.input[1]))
                n.input[0] = f"{x}_smoothed"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


@click.command()
@click.option("--alphas", default="0.4,0.5,0.6", show_default=True)
@click.option("--speed/--no-speed", default=False, help="Also time the α=0.5 variants (1000 texts).")
@click.option("--rounds", type=int, default=3, show_default=True)
def main(alphas: str, speed: bool, rounds: int) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    from probe_common import DefaultModel, race, ratio_table

    from vecq.engines.export import export_onnx, quantize_int8, split_cls
    from vecq.engines.parity import calibration_texts
    from vecq.worker.corpus import make_corpus

    m = DefaultModel.load()
    with tempfile.TemporaryDirectory(prefix="vecq-sq-") as tmp_s:
        tmp = Path(tmp_s)
        fp32 = export_onnx(m.module, tmp / "fp32.onnx")
        stats = activation_max(fp32, m.tokenizer, calibration_texts(), tmp)
        click.echo(f"{'α':>4} {'int8 rr':>9} {'[CLS] apart, int8':>18} {'[CLS] apart, int8 rr':>21}")
        for alpha in [float(a) for a in alphas.split(",")]:
            sm = smooth_activations(fp32, tmp / f"sm-{alpha}.onnx", stats, alpha=alpha)
            split_cls(sm, tmp / "split.onnx")
            row = [
                m.parity(quantize_int8(sm, tmp / "a.onnx", reduce_range=True)),
                m.parity(quantize_int8(tmp / "split.onnx", tmp / "b.onnx")),
                m.parity(quantize_int8(tmp / "split.onnx", tmp / "c.onnx", reduce_range=True)),
            ]
            click.echo(f"{alpha:>4} {row[0]:>9.5f} {row[1]:>18.5f} {row[2]:>21.5f}")
        if not speed:
            return
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
        engines = {k: m.embedder(p) for k, p in paths.items()}
        rates = race(m.model_dir, engines, make_corpus(1000, seed=0), rounds)
        for e in engines.values():
            e.close()
    ratio_table(rates, {})


if __name__ == "__main__":
    main()
