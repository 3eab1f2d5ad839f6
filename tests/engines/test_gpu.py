"""GPU engines (issue 4): skipped without CUDA; run on the GPU machine.

- fp16 vs fp32: every text's cosine ≥ 0.999;
- a CUDA-graph replay returns what a plain run returns;
- each shape is captured exactly once, at warmup; a batch of every declared shape then runs
  without a new capture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder
from vecq.engines.base import Batch
from vecq.engines.parity import cosines
from vecq.engines.shapes import ShapeSet


def _cuda_ready() -> bool:
    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda_ready(), reason="needs CUDA and onnxruntime-gpu")]

SHAPES = ShapeSet.grid((1, 2, 8, 32, 64), (16, 64, 256), max_seq_len=256)


@pytest.fixture(scope="module")
def fp16_bundle(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vecq.engines.build import build_bundle

    out = tmp_path_factory.mktemp("gpu") / "minilm-fp16"
    build_bundle(default_model_dir, out, device="cuda", precision="fp16", shapes=SHAPES)
    return out


@pytest.fixture(scope="module")
def reference(default_model_dir: Path, varied_texts: list[str]) -> np.ndarray:
    return Embedder.load(default_model_dir, backend="torch", device="cpu").embed(varied_texts)


def _batches_of_every_shape(shapes: ShapeSet, rng: np.random.Generator) -> list[Batch]:
    out = []
    for shape in shapes:
        ids = rng.integers(1000, 20000, size=(shape.batch, shape.seq_len), dtype=np.int64)
        lengths = rng.integers(2, shape.seq_len + 1, size=shape.batch)
        mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        out.append(Batch(input_ids=ids * mask, attention_mask=mask, rows=shape.batch))
    return out


def test_onnx_fp16_matches_fp32_for_every_text(fp16_bundle: Path, varied_texts, reference) -> None:
    from vecq.engines.bundle import read_manifest

    manifest = read_manifest(fp16_bundle)
    assert manifest.parity.min_cosine >= 0.999 and "packed" in manifest.graph
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        assert cosines(emb.embed(varied_texts), reference).min() >= 0.999


def test_onnx_graph_replay_equals_plain_run(fp16_bundle: Path, varied_texts) -> None:
    with (
        Embedder.load(fp16_bundle, device="cuda") as graphed,
        Embedder.load(fp16_bundle, device="cuda", graphs=False) as plain,
    ):
        graphed.warmup()
        plain.warmup()
        np.testing.assert_allclose(graphed.embed(varied_texts), plain.embed(varied_texts), atol=1e-5)


def test_onnx_each_shape_captured_once(fp16_bundle: Path) -> None:
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        engine = emb.engine
        graphed = [s for s in emb.shapes if s.batch < engine.packed_from_batch]
        assert engine.graphs.captures == len(graphed) > 0
        for batch in _batches_of_every_shape(emb.shapes, np.random.default_rng(0)):
            out = engine.run(batch)
            assert out.shape == (batch.shape.batch, emb.dim) and np.isfinite(out).all()
        assert engine.graphs.captures == len(graphed)


def test_packed_graph_matches_fused(fp16_bundle: Path) -> None:
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        for batch in _batches_of_every_shape(emb.shapes, np.random.default_rng(1))[:6]:
            a, b = emb.engine.graphs.run(batch), emb.engine.packed.run(batch)
            assert cosines(a, b).min() >= 0.999


def test_torch_graphs_fp16(default_model_dir: Path, varied_texts, reference) -> None:
    from vecq.engines.backends.torch import TorchEngine
    from vecq.engines.backends.torch_graphs import TorchGraphEngine
    from vecq.engines.spec import read_spec

    spec = read_spec(default_model_dir)
    eager = TorchEngine.from_model_dir(
        default_model_dir, spec=spec, shapes=SHAPES, device="cuda", precision="fp16"
    )
    graphs = TorchGraphEngine(eager.module, shapes=SHAPES, dim=spec.dim)
    graphs.warmup()
    assert graphs.captures == len(SHAPES)
    for batch in _batches_of_every_shape(SHAPES, np.random.default_rng(2)):
        np.testing.assert_allclose(graphs.run(batch), eager.run(batch), atol=2e-3)
    assert graphs.captures == len(SHAPES)
    via_load = Embedder.load(
        default_model_dir, backend="torch", device="cuda", precision="fp16", shapes=SHAPES, packed=False
    )
    assert isinstance(via_load.engine, TorchGraphEngine)  # packed=False: one graph per shape
    assert cosines(via_load.embed(varied_texts), reference).min() >= 0.999
