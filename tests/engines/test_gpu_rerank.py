"""Rerankers on CUDA (issue 17): skipped without a GPU.

Tiny random cross-encoders (BERT with segment ids, XLM-R without) served in torch fp16 through
the padding-free packed engine (`PackedScorer` in `PackedGraphEngine`) and through one graph per
padded shape (`packed=False`): scores within 5e-3 of `CrossEncoder.predict` fp32 on the CPU for
every parity pair (long ones cut longest-first), a pair's score independent of its batch-mates,
every token buffer captured once at warmup and none after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.timeout(300),
]

KINDS = ("bert", "xlm-roberta")
QUERIES = ("北京的天气怎么样？", "best pizza 🍕 near me", "what does the long query say? " * 40)
TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vecq.engines.random_model import write_random_cross_encoder

    root = tmp_path_factory.mktemp("gpu-rerankers")
    return {
        # initializer_range 0.2: scores that spread (~0.25), so a lost segment id shows
        kind: write_random_cross_encoder(
            root / kind, model_type=kind, hidden=64, heads=2, initializer_range=0.2
        )
        for kind in KINDS
    }


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "graph-per-shape"])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_reranker_matches_cross_encoder(kind: str, packed: bool, model_dirs, varied_texts) -> None:
    from sentence_transformers import CrossEncoder

    from vecq.engines.backends.torch_graphs import TorchGraphEngine
    from vecq.engines.backends.torch_packed import PackedGraphEngine
    from vecq.engines.reranker import Reranker

    reference = CrossEncoder(str(model_dirs[kind]), device="cpu")
    reranker = Reranker.load(model_dirs[kind], device="cuda", packed=packed)
    assert isinstance(reranker.engine, PackedGraphEngine if packed else TorchGraphEngine)
    reranker.warmup()
    captured = reranker.engine.captures
    tracks = len(reranker.engine.tracks) if packed else 1
    assert captured == len(reranker.engine.buckets if packed else reranker.shapes) * tracks
    for query in QUERIES:
        got = reranker.score(query, varied_texts)
        want = reference.predict([(query, d) for d in varied_texts], show_progress_bar=False)
        assert np.ptp(want) >= 0.05  # scores that differ: a test that can see a wrong one
        worst = float(np.abs(got - want).max())
        assert worst <= TOLERANCE, f"{kind} packed={packed}: worst score difference {worst:.2e}"
    alone = np.array([reranker.score(QUERIES[1], [d])[0] for d in varied_texts[:8]])
    np.testing.assert_allclose(alone, reranker.score(QUERIES[1], varied_texts)[:8], atol=2e-3)
    assert reranker.engine.captures == captured  # nothing captured after warmup
    reranker.close()


def test_a_cuda_reranker_bundle_builds_and_serves(model_dirs, tmp_path: Path, varied_texts) -> None:
    """`vecq build --device cuda --backend torch --precision fp16` of a cross-encoder: its score
    parity is checked through the packed engine that will serve it, and the bundle serves."""
    from sentence_transformers import CrossEncoder

    from vecq.engines.build import build_bundle
    from vecq.engines.reranker import Reranker

    manifest = build_bundle(
        model_dirs["bert"], tmp_path / "b", backend="torch", device="cuda", precision="fp16"
    )
    assert manifest.task == "rerank" and manifest.parity.max_abs_error <= TOLERANCE  # type: ignore[union-attr]
    reranker = Reranker.load(tmp_path / "b", device="cuda")
    reranker.warmup()
    want = CrossEncoder(str(model_dirs["bert"]), device="cpu").predict(
        [(QUERIES[0], d) for d in varied_texts]
    )
    assert float(np.abs(reranker.score(QUERIES[0], varied_texts) - want).max()) <= TOLERANCE
    reranker.close()
