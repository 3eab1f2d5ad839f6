"""ModernBERT's padding-free ONNX twin (engines/unpadded_modernbert.py) on the CPU: the linear
layers over the gathered real tokens, attention in the padded layout, against the padded model.

Not yet part of a CUDA bundle: that needs its build and its speed measured on the GPU first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vecq.engines.export import export_onnx
from vecq.engines.pooled import load_pooled
from vecq.engines.random_model import write_random_encoder
from vecq.engines.spec import read_spec
from vecq.engines.unpadded_modernbert import unpadded_twin


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny ModernBERT whose 16-token window is shorter than the batches' texts."""
    root = write_random_encoder(
        tmp_path_factory.mktemp("modernbert") / "model", model_type="modernbert", hidden=64, heads=2,
        max_positions=256, local_attention=16,
    )  # fmt: skip
    return load_pooled(root, read_spec(root), attn_implementation="eager")


def _batch(batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return torch.randint(5, 1000, (batch, seq), generator=g) * mask, mask


@pytest.mark.parametrize(("batch", "seq"), [(4, 64), (1, 8), (3, 200)])
def test_the_twin_and_its_onnx_export_equal_the_padded_model(
    pooled, tmp_path: Path, batch: int, seq: int
) -> None:
    """Texts shorter and longer than the window, with padding: the twin in torch and its exported
    graph on ORT's CPU EP give the padded model's vectors (fp32, to 1e-6)."""
    import onnxruntime as ort

    twin = unpadded_twin(pooled)
    ids, mask = _batch(batch, seq, seed=batch * seq)
    with torch.no_grad():
        want = pooled(ids, mask).numpy()
        np.testing.assert_allclose(twin(ids, mask).numpy(), want, atol=1e-6)
    path = export_onnx(twin, tmp_path / "twin.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
