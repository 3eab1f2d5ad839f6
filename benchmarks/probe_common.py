"""What the int8 probes share: the default model loaded once with its parity reference, and a
race of `SentenceTransformer.encode` against vecq engines on one corpus, rounds interleaved."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
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


def weight_matmuls(model) -> list:
    """The graph's MatMul nodes whose second input is a constant weight."""
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def matmul_inputs(path: Path, tokenizer, texts: Sequence[str], work: Path) -> Iterator[dict[str, np.ndarray]]:
    """Per text, the input of every weight MatMul of the graph at `path` (one text per run, so
    no padding row is seen), by input name."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    xs = sorted({n.input[0] for n in weight_matmuls(model)})
    for x in xs:
        model.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    probe = work / "matmul-inputs.onnx"
    onnx.save(model, str(probe))
    sess = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    try:
        for ids in tokenizer.encode(list(texts)).ids:
            feed = {"input_ids": ids[None, :], "attention_mask": np.ones((1, len(ids)), np.int64)}
            values = sess.run(None, {k: v for k, v in feed.items() if k in inputs})
            yield {n: v for n, v in zip(names, values, strict=True) if n in xs}
    finally:
        probe.unlink()
