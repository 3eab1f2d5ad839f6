"""GPU engines (issue 4): run on the GPU machine; each test skips without what it needs
(ORT's CUDA tests without onnxruntime-gpu, the torch ones without a CUDA torch).

Every GPU output is checked against torch fp32 on the CPU (cosine >= 0.999), on texts and on a
random batch of every declared shape, and each test checks the path it names by the engine's
own counters: graphs captured once at warmup and replayed after (`captures`, `replays`), and
batches the hybrid ORT engine routes to its packed twin served there (`runs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder
from vecq.engines.base import Batch
from vecq.engines.parity import cosines
from vecq.engines.shapes import ShapeSet


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return _torch_cuda() and "CUDAExecutionProvider" in ort.get_available_providers()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _torch_cuda(), reason="needs CUDA")]
needs_ort_cuda = pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu")

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


@pytest.fixture(scope="module")
def cpu_fp32(default_model_dir: Path):
    """torch fp32 on the CPU: its module is the reference for random batches."""
    from vecq.engines.backends.torch import TorchEngine
    from vecq.engines.spec import read_spec

    return TorchEngine.from_model_dir(default_model_dir, spec=read_spec(default_model_dir), shapes=SHAPES)


def _batches_of_every_shape(shapes: ShapeSet, rng: np.random.Generator, *, vocab: int = 20000) -> list[Batch]:
    out = []
    for shape in shapes:
        ids = rng.integers(min(1000, vocab // 2), vocab, size=(shape.batch, shape.seq_len), dtype=np.int64)
        lengths = rng.integers(2, shape.seq_len + 1, size=shape.batch)
        mask = (np.arange(shape.seq_len)[None, :] < lengths[:, None]).astype(np.int64)
        out.append(Batch(input_ids=ids * mask, attention_mask=mask, rows=shape.batch))
    return out


def _close_to_cpu(got: np.ndarray, cpu_fp32, batch: Batch) -> None:
    """`got` is within cosine 0.999 of torch fp32 on the CPU for every row of `batch`."""
    import torch

    ids, mask = (torch.from_numpy(np.ascontiguousarray(a)) for a in (batch.input_ids, batch.attention_mask))
    with torch.inference_mode():
        want = cpu_fp32.module(ids, mask).float().numpy()[: batch.rows]
    assert got.shape == (batch.rows, cpu_fp32.dim)
    worst = cosines(got, want).min()
    assert worst >= 0.999, f"shape {batch.shape}: cosine {worst:.5f} to torch fp32 on CPU"


@needs_ort_cuda
def test_onnx_fp16_matches_fp32_for_every_text(fp16_bundle: Path, varied_texts, reference) -> None:
    from vecq.engines.bundle import read_manifest

    manifest = read_manifest(fp16_bundle)
    assert manifest.parity.min_cosine >= 0.999 and "packed" in manifest.graph
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        assert cosines(emb.embed(varied_texts), reference).min() >= 0.999


def _same_up_to_fp16(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert cosines(a, b).min() >= 0.99999


@needs_ort_cuda
def test_onnx_graph_replay_equals_plain_run(fp16_bundle: Path, varied_texts, reference, cpu_fp32) -> None:
    """The graphed engine serves each small shape by replaying its capture (`replays` counts one
    per batch, `captures` stays put) and returns what the same session run plainly returns, to
    fp16's rounding (a capture may pick other cuBLAS algorithms: up to 2.4e-4 apart on the H200)."""
    with (
        Embedder.load(fp16_bundle, device="cuda") as graphed,
        Embedder.load(fp16_bundle, device="cuda", graphs=False) as plain,
    ):
        graphed.warmup()
        plain.warmup()
        g, p = graphed.engine.graphs, plain.engine.graphs
        captured, replayed = g.captures, g.replays
        assert captured > 0 and p.captures == p.replays == 0
        batches = _batches_of_every_shape(graphed.shapes, np.random.default_rng(3))
        small = [b for b in batches if b.rows < graphed.engine.packed_from_batch]
        for batch in small:
            got = g.run(batch)
            _same_up_to_fp16(got, p.run(batch))
            _close_to_cpu(got, cpu_fp32, batch)
        assert (g.captures, g.replays - replayed) == (captured, len(small)), "a batch ran outside its graph"
        served = graphed.embed(varied_texts)
        _same_up_to_fp16(served, plain.embed(varied_texts))
        assert cosines(served, reference).min() >= 0.999
        before = g.replays
        graphed.embed(varied_texts[:3])  # at most three rows: batches the graphs serve
        assert g.replays > before and g.captures == captured


@needs_ort_cuda
def test_onnx_each_shape_captured_once(fp16_bundle: Path, cpu_fp32) -> None:
    """Graphs are captured at warmup for the shapes routed to them and never again; a batch of
    every declared shape is then within cosine 0.999 of torch fp32 on the CPU."""
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        engine = emb.engine
        graphed = [s for s in emb.shapes if s.batch < engine.packed_from_batch]
        assert engine.graphs.captures == len(graphed) > 0
        for batch in _batches_of_every_shape(emb.shapes, np.random.default_rng(0)):
            _close_to_cpu(engine.run(batch), cpu_fp32, batch)
        assert engine.graphs.captures == len(graphed)


@needs_ort_cuda
def test_packed_twin_serves_the_large_shapes_and_matches_fp32(fp16_bundle: Path, cpu_fp32) -> None:
    """The hybrid engine sends batches of `packed_from_batch` rows and more to the packed twin:
    its run count moves for exactly those, and every shape's served vectors, the graph and the
    packed path alike, are within cosine 0.999 of torch fp32 on the CPU."""
    with Embedder.load(fp16_bundle, device="cuda") as emb:
        emb.warmup()
        engine = emb.engine
        batches = _batches_of_every_shape(emb.shapes, np.random.default_rng(1))
        large = [b for b in batches if b.rows >= engine.packed_from_batch]
        assert large and len(large) < len(batches)
        for batch in batches:
            packed_runs, graph_runs = engine.packed.runs, engine.graphs.runs
            _close_to_cpu(engine.run(batch), cpu_fp32, batch)
            to_packed = batch.rows >= engine.packed_from_batch
            assert engine.packed.runs - packed_runs == int(to_packed), f"shape {batch.shape}"
            assert engine.graphs.runs - graph_runs == int(not to_packed), f"shape {batch.shape}"


def test_torch_graphs_fp16(default_model_dir: Path, varied_texts, reference, cpu_fp32) -> None:
    """One graph per shape captured at warmup; a batch of every shape is a replay (`replays`),
    equal to the eager fp16 module and within cosine 0.999 of fp32 on the CPU."""
    from vecq.engines.backends.torch import TorchEngine
    from vecq.engines.backends.torch_graphs import TorchGraphEngine
    from vecq.engines.spec import read_spec

    spec = read_spec(default_model_dir)
    eager = TorchEngine.from_model_dir(
        default_model_dir, spec=spec, shapes=SHAPES, device="cuda", precision="fp16"
    )
    graphs = TorchGraphEngine(eager.module, shapes=SHAPES, dim=spec.dim)
    graphs.warmup()
    assert (graphs.captures, graphs.replays) == (len(SHAPES), 0)
    for batch in _batches_of_every_shape(SHAPES, np.random.default_rng(2)):
        got = graphs.run(batch)
        np.testing.assert_allclose(got, eager.run(batch), atol=2e-3)
        _close_to_cpu(got, cpu_fp32, batch)
    assert (graphs.captures, graphs.replays) == (len(SHAPES), len(SHAPES))
    via_load = Embedder.load(
        default_model_dir, backend="torch", device="cuda", precision="fp16", shapes=SHAPES, packed=False
    )
    assert isinstance(via_load.engine, TorchGraphEngine)  # packed=False: one graph per shape
    via_load.warmup()
    assert cosines(via_load.embed(varied_texts), reference).min() >= 0.999
    assert via_load.engine.captures == len(SHAPES) and via_load.engine.replays > 0


@needs_ort_cuda
@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta", "xlm-roberta", "modernbert"])
def test_every_architecture_on_ort_cuda_fp16_matches_cpu_fp32(
    tmp_path: Path, varied_texts, model_type
) -> None:
    """Issue 16 on ONNX Runtime's CUDA EP: each architecture's tiny random model built into an
    fp16 bundle (`vecq build --device cuda`: its own parity check) and served from it within
    cosine 0.999 of torch fp32 on the CPU for every varied text, a text's vector independent of
    its batch-mates; the small shapes replay CUDA graphs, ModernBERT's too (a session per shape,
    its weights shared: its dynamic shape arithmetic otherwise runs on the CPU EP), and the large
    ones run the padding-free twin (ORT's packing mode; ModernBERT's own unpadded export), on the
    texts and on random batches of every large shape, padding of every length included."""
    from vecq.engines.backends.onnx_cuda import HybridCudaEngine
    from vecq.engines.backends.torch import TorchEngine
    from vecq.engines.build import build_bundle
    from vecq.engines.random_model import write_random_encoder
    from vecq.engines.spec import read_spec

    root = write_random_encoder(
        tmp_path / model_type, model_type=model_type, hidden=64, heads=2, max_positions=256
    )
    bundle = tmp_path / f"{model_type}-fp16"
    build_bundle(root, bundle, device="cuda", precision="fp16", shapes=SHAPES)
    reference = Embedder.load(root, backend="torch", device="cpu").embed(varied_texts)
    with Embedder.load(bundle, device="cuda") as gpu:
        gpu.warmup()
        assert isinstance(gpu.engine, HybridCudaEngine), type(gpu.engine)  # graphs, then the twin
        twin, warmed = gpu.engine.packed, gpu.engine.packed.runs
        got = gpu.embed(varied_texts)
        assert cosines(got, reference).min() >= 0.999
        alone = np.stack([gpu.embed([t])[0] for t in varied_texts[:8]])
        assert cosines(alone, got[:8]).min() >= 0.9999
        lane = gpu.engine.graphs
        assert lane.graphs and lane.captures > 0 and lane.replays > 0, (lane.captures, lane.replays)
        assert (lane.shared_weight_bytes > 0) == (model_type == "modernbert")
        assert twin.runs > warmed, "no batch of the texts ran on the padding-free twin"
        cpu = TorchEngine.from_model_dir(root, spec=read_spec(root), shapes=SHAPES)
        vocab = int(cpu.module.encoder.config.vocab_size)
        for batch in _batches_of_every_shape(SHAPES, np.random.default_rng(3), vocab=vocab):
            if batch.rows >= gpu.engine.packed_from_batch:
                _close_to_cpu(gpu.engine.run(batch), cpu, batch)
