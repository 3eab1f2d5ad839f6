"""One ORT session per shape with shared weights: how ModernBERT gets CUDA graphs on ORT.

ORT refuses to capture a CUDA graph when any node runs on the CPU EP, and ModernBERT's exported
graph computes its rotary positions and window mask from the dynamic sizes (Shape, Range,
Gather), which ORT places on the CPU.  `OnnxCudaEngine` then builds one session per shape with
`batch` and `sequence` fixed, where all of that folds away.  The mechanism is EP-independent, so
it is checked here on the CPU EP; the capture itself is checked on the GPU
(tests/engines/test_gpu.py, the ModernBERT case of the every-architecture test).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vecq.engines.backends.onnx_cuda import SharedWeights, session_options
from vecq.engines.build import build_bundle
from vecq.engines.random_model import write_random_encoder
from vecq.engines.shapes import Shape

ort = pytest.importorskip("onnxruntime")
SHAPE_OPS = {"Shape", "Range", "Size", "ConstantOfShape"}  # sizes read from the inputs at run time


@pytest.fixture(scope="module")
def modernbert_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modernbert")
    model = write_random_encoder(
        root / "model", model_type="modernbert", hidden=64, heads=2, max_positions=256, local_attention=16
    )
    build_bundle(model, root / "bundle", device="cpu", precision="fp32")
    return root / "bundle" / "model.onnx"


def _ops(path: Path) -> Counter[str]:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_a_session_per_shape_folds_the_shape_arithmetic_and_matches_the_dynamic_one(
    modernbert_onnx: Path, tmp_path: Path
) -> None:
    """With `batch` and `sequence` fixed, the optimized graph has none of the dynamic shape ops
    that kept ModernBERT from CUDA graphs; its vectors equal the dynamic session's for every
    shape; and the sessions read one copy of the weights (the same buffers, not copies)."""
    dynamic = ort.InferenceSession(str(modernbert_onnx), providers=["CPUExecutionProvider"])
    assert _ops(modernbert_onnx).keys() & SHAPE_OPS  # what there is to fold
    weights = SharedWeights(ort, modernbert_onnx, device="cpu")
    assert weights.views and weights.nbytes > 0
    rng = np.random.default_rng(0)
    for shape in (Shape(2, 32), Shape(4, 16)):
        opts = session_options(ort, shape=shape, weights=weights)
        optimized = tmp_path / f"{shape.batch}x{shape.seq_len}.onnx"
        opts.optimized_model_filepath = str(optimized)
        session = ort.InferenceSession(str(modernbert_onnx), opts, providers=["CPUExecutionProvider"])
        assert not _ops(optimized).keys() & SHAPE_OPS
        ids = rng.integers(5, 1000, (shape.batch, shape.seq_len)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, shape.seq_len // 2 :] = 0
        feed = {"input_ids": ids * mask, "attention_mask": mask}
        np.testing.assert_allclose(session.run(None, feed)[0], dynamic.run(None, feed)[0], atol=1e-5)
    for name, view in weights.views.items():
        assert view.data_ptr() == weights.owners[name].data_ptr()  # a view, not a copy
