"""A text's vector depends on nothing but the text: not its batch-mates, not the padding."""

from __future__ import annotations

import numpy as np

from vecq.engines import Shape
from vecq.engines.parity import cosines
from vecq.worker.bench.corpus import make_corpus


def test_vector_alone_equals_vector_inside_a_big_mixed_batch(default_onnx, varied_texts) -> None:
    probes = [varied_texts[i] for i in (0, 12, 17, 29, 44, 45, 55)]
    crowd = make_corpus(150, seed=3) + varied_texts
    mixed = default_onnx.embed(crowd + probes)[-len(probes) :]
    alone = np.stack([default_onnx.embed([t])[0] for t in probes])
    assert cosines(mixed, alone).min() >= 0.99999


def test_shape_padding_never_changes_a_vector(default_onnx) -> None:
    tok, engine = default_onnx.tokenizer, default_onnx.engine
    rows = tok.encode(["The quick brown fox.", "今天天气很好"]).ids
    tight = engine.run(tok.make_batch(rows, Shape(2, 16)))
    for shape in (Shape(8, 16), Shape(2, 256), Shape(8, 256), Shape(3, 64)):
        assert shape in engine.shapes
        padded = engine.run(tok.make_batch(rows, shape))[: len(rows)]
        assert cosines(padded, tight).min() >= 0.99999, shape


def test_torch_engine_is_batch_invariant_too(default_torch, varied_texts) -> None:
    texts = varied_texts[:20]
    together = default_torch.embed(texts)
    alone = np.stack([default_torch.embed([t])[0] for t in texts])
    assert cosines(together, alone).min() >= 0.99999
