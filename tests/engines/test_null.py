"""The null engine: deterministic, batch-independent, shape-checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder, ShapeError, ShapeSet
from vecq.engines.backends.null import NullEngine


def test_null_vectors_are_deterministic_unit_and_batch_independent(tiny_bert_dir: Path) -> None:
    emb = Embedder.load(tiny_bert_dir, backend="null")
    texts = ["你好", "abc", "", "中文 mixed text " * 20]
    a = emb.embed(texts)
    b = emb.embed(texts[::-1])[::-1]
    alone = np.stack([emb.embed([t])[0] for t in texts])
    assert a.dtype == np.float32 and a.shape == (4, emb.dim)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, alone, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(a[0], a[1])


def test_null_engine_refuses_undeclared_shapes(tiny_bert_dir: Path) -> None:
    emb = Embedder.load(tiny_bert_dir, backend="null")
    engine = NullEngine(shapes=ShapeSet.grid([2], [16], max_seq_len=16), dim=8)
    batch = emb.tokenizer.make_batch([np.array([101, 102])], emb.shapes.fit(1, 16))
    with pytest.raises(ShapeError, match="is not one of the engine's shapes"):
        engine.run(batch)


def test_importing_the_engines_layer_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vecq.engines, vecq.engines.bundle, vecq.engines.build, vecq.engines.onnx_build,"
        " vecq.engines.cache, vecq.engines.backends;"
        "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
