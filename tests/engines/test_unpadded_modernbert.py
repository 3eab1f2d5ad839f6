"""ModernBERT's ONNX graphs on the CPU: the padding-free twin (engines/unpadded_modernbert.py,
the linear layers over the gathered real tokens, attention in the padded layout) against the
padded model, and the rotary angles of both kept in fp32 by an fp16 build.

The twin's CUDA bundle (fp16 parity, speed) is tested on the GPU (tests/engines/test_gpu.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vecq.engines.export import export_onnx, optimize
from vecq.engines.pooled import load_pooled
from vecq.engines.random_model import write_random_encoder
from vecq.engines.spec import read_spec
from vecq.engines.unpadded_modernbert import unpadded_twin


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny ModernBERT whose 16-token window is shorter than the batches' texts."""
    root = write_random_encoder(
        tmp_path_factory.mktemp("modernbert") / "model", model_type="modernbert", hidden=64, heads=2,
        max_positions=4096, local_attention=16,
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
    path = export_onnx(twin, tmp_path / "twin.onnx", contrib_ops=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("graph", ["padded", "twin"])
def test_fp16_builds_keep_the_rotary_angles_in_fp32(pooled, tmp_path: Path, graph: str) -> None:
    """At position 4,000 an fp16 angle (position × frequency) is off by radians; the fp16 graph's
    cosines of the angles must be those of float64 to fp32 precision at every position."""
    import onnx
    import onnxruntime as ort

    module = pooled if graph == "padded" else unpadded_twin(pooled)
    config, spec = pooled.encoder.config, read_spec(Path(pooled.encoder.config.name_or_path))
    exported = export_onnx(module, tmp_path / "fp32.onnx", contrib_ops=graph == "twin")
    half = optimize(
        exported, tmp_path / "fp16.onnx", spec=spec, num_heads=config.num_attention_heads, fp16=True,
        use_gpu=False, model_type="modernbert",
    )  # fmt: skip
    model = onnx.load(str(half))
    cosines = [n.output[0] for n in model.graph.node if n.op_type == "Cos"]
    assert len(cosines) == 2  # one per rotary base (global, local)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(c) for c in cosines)
    onnx.save(model, str(tmp_path / "probe.onnx"))
    session = ort.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    seq = 4000
    ids = np.full((1, seq), 500, dtype=np.int64)
    got = session.run(cosines, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    dim = config.hidden_size // config.num_attention_heads
    truths = []
    for kind in sorted(set(config.layer_types)):
        inv_freq = 1.0 / (config.rope_parameters[kind]["rope_theta"] ** (np.arange(0, dim, 2) / dim))
        angles = np.arange(seq)[:, None] * inv_freq[None]
        truths.append(np.cos(np.concatenate([angles, angles], axis=1)))
    for value in got:
        value = np.asarray(value, dtype=np.float64).reshape(seq, dim)
        assert min(np.abs(value - truth).max() for truth in truths) < 1e-3


def test_a_cast_to_fp16_and_back_is_skipped(tmp_path: Path) -> None:
    """fp32 → fp16 → fp32 between two fp32-kept nodes loses the integers above 2,048 (and the
    rotary angles with them); the rewired graph keeps 4,001 exact."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vecq.engines.export import skip_round_trips

    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="down"),
        helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT, name="up"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([4001.0], dtype=np.float32)

    def run(m: onnx.ModelProto) -> float:
        onnx.save(m, str(tmp_path / "m.onnx"))
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        return float(session.run(None, {"x": x})[0][0])

    assert run(model) == 4000.0  # fp16 holds every other integer there
    assert skip_round_trips(model.graph) == 1
    assert run(model) == 4001.0
