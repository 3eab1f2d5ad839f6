"""`Reranker` against `sentence_transformers.CrossEncoder.predict`, on torch CPU and ONNX CPU.

Tiny random cross-encoders (BERT with segment ids, XLM-R without) built on the spot
(`random_model.write_random_cross_encoder`); the parity set pairs a Chinese, an emoji and an
English query with every parity text, long ones far over the model's 128 tokens, so that the
longest-first truncation of pairs is exercised on both sides of the pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import UnsupportedModel
from vecq.engines.random_model import write_random_cross_encoder, write_random_encoder
from vecq.engines.reranker import Reranker

KINDS = ("bert", "xlm-roberta")
TOLERANCE = 1e-4
LONG_QUERY = "what does the long query say about 长文本 and truncation? " * 40
QUERIES = ("北京的天气怎么样？", "best pizza 🍕 near me", LONG_QUERY)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerankers")
    # initializer_range 0.2: scores that spread (~0.25), so a lost segment id or position shows
    spread = {"initializer_range": 0.2}
    dirs = {kind: write_random_cross_encoder(root / kind, model_type=kind, **spread) for kind in KINDS}
    dirs["identity"] = write_random_cross_encoder(
        root / "identity", activation="torch.nn.modules.linear.Identity", seed=1
    )
    return dirs


@pytest.fixture(scope="module")
def documents(varied_texts: list[str]) -> list[str]:
    return varied_texts


@pytest.fixture(scope="module")
def references(model_dirs, documents) -> dict[tuple[str, str], np.ndarray]:
    """`CrossEncoder.predict`'s scores of every (query, document) pair, per model."""
    from sentence_transformers import CrossEncoder

    out = {}
    for kind, model_dir in model_dirs.items():
        model = CrossEncoder(str(model_dir), device="cpu")
        for q in QUERIES:
            out[kind, q] = model.predict([(q, d) for d in documents], batch_size=16, show_progress_bar=False)
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", [*KINDS, "identity"])
def test_matches_cross_encoder_predict(kind, backend, model_dirs, documents, references) -> None:
    reranker = Reranker.load(model_dirs[kind], backend=backend)
    worst = 0.0
    for query in QUERIES:
        scores = reranker.score(query, documents)
        reference = references[kind, query]
        assert scores.dtype == np.float32 and scores.shape == (len(documents),)
        diff = np.abs(scores - reference) / np.maximum(1.0, np.abs(reference))
        worst = max(worst, float(diff.max()))
        assert diff.max() <= TOLERANCE, f"{kind} {backend}: pair {diff.argmax()} differs by {diff.max():.2e}"
    print(f"{kind} {backend}: worst difference {worst:.2e}")
    if kind != "identity":  # sigmoid scores, not a constant
        assert float(np.ptp(scores)) > 0 and scores.min() > 0 and scores.max() < 1


def test_truncation_matters_and_a_pair_alone_equals_it_in_a_batch(model_dirs, documents) -> None:
    reranker = Reranker.load(model_dirs["bert"])
    lengths = reranker.tokenizer.encode_pairs(LONG_QUERY, documents).lengths
    assert lengths.max() == reranker.spec.max_seq_len == 128
    together = reranker.score(QUERIES[0], documents)
    alone = np.array([reranker.score(QUERIES[0], [d])[0] for d in documents[:8]])
    np.testing.assert_allclose(together[:8], alone, atol=1e-5)


def test_an_embedding_model_is_refused_in_one_line(tmp_path: Path) -> None:
    encoder = write_random_encoder(tmp_path / "enc", model_type="bert")
    with pytest.raises(UnsupportedModel) as info:
        Reranker.load(encoder)
    assert "not a cross-encoder" in str(info.value) and "\n" not in str(info.value)


def test_bad_input_names_the_field(model_dirs) -> None:
    from vecq.engines import BadInput

    reranker = Reranker.load(model_dirs["bert"])
    with pytest.raises(BadInput, match=r"documents|texts\[1\]"):
        reranker.score("q", ["a", 3])  # type: ignore[list-item]
    with pytest.raises(BadInput, match="query"):
        reranker.score(None, ["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_packed_scorer_equals_the_padded_model(kind, model_dirs, documents) -> None:
    """The scorer the GPU serves rerankers with (`PackedScorer`: pairs end to end, BERT's segment
    ids derived per text in the buffer), run here on its torch references in fp32, against the
    padded `ScoringEncoder` on the same pairs; filler tokens and empty slots change nothing."""
    import torch

    from vecq.engines.backends.torch_packed import pack_into
    from vecq.engines.base import TokenBatch
    from vecq.engines.cross_encoder import PackedScorer

    reranker = Reranker.load(model_dirs[kind])
    scoring = reranker.engine.module
    tokens = reranker.tokenizer.encode_pairs(QUERIES[1], documents[:20])
    batch = TokenBatch(ids=tokens.flat, lengths=tokens.lengths)
    ids, cu = np.zeros(-(-batch.real_tokens // 128) * 128 + 128, dtype=np.int32), np.zeros(25, dtype=np.int32)
    n = pack_into(batch, ids, cu)
    with torch.inference_mode():
        packed = PackedScorer(scoring)(
            torch.from_numpy(ids), torch.from_numpy(cu), torch.tensor([n], dtype=torch.int32)
        )
    assert packed.shape == (24, 1) and packed.dtype == torch.float32
    want = reranker.score(QUERIES[1], documents[:20])
    np.testing.assert_allclose(packed[:20, 0].numpy(), want, atol=1e-5)


@pytest.fixture(scope="module")
def bundles(model_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`vecq build` of the BERT cross-encoder: ONNX and torch, for the CPU."""
    from vecq.engines.build import build_bundle

    root = tmp_path_factory.mktemp("rerank-bundles")
    out = {}
    for backend in ("onnx", "torch"):
        build_bundle(model_dirs["bert"], root / backend, backend=backend)
        out[backend] = root / backend
    return out


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_reranker_bundle_scores_like_cross_encoder(backend, bundles, documents, references) -> None:
    """A cross-encoder built by `vecq build` is a reranker's bundle: its manifest says so, its
    parity is of scores (every parity text with three queries), and it loads as a `Reranker`
    that scores as `CrossEncoder.predict` does."""
    from vecq.engines.bundle import read_manifest
    from vecq.engines.parity import ScoreParity

    manifest = read_manifest(bundles[backend])
    assert (manifest.task, manifest.dim, manifest.activation, manifest.backend) == (
        "rerank",
        1,
        "sigmoid",
        backend,
    )
    assert isinstance(manifest.parity, ScoreParity) and manifest.parity.n_pairs >= 150
    assert manifest.parity.max_abs_error <= 1e-4 and manifest.parity.passed
    reranker = Reranker.load(bundles[backend])
    for query in QUERIES:
        np.testing.assert_allclose(
            reranker.score(query, documents), references["bert", query], atol=TOLERANCE
        )


def test_reranker_bundle_misuse_is_refused_in_one_line(
    bundles, model_dirs, tmp_path: Path, monkeypatch
) -> None:
    from vecq.engines import BundleError, Embedder, ParityError, UnknownBackend
    from vecq.engines import parity as parity_module
    from vecq.engines.build import build_bundle

    with pytest.raises(BundleError, match=r"a reranker's bundle \(serve it with `vecq worker --bundle`"):
        Embedder.load(bundles["onnx"])
    with pytest.raises(BundleError, match=r"built for backend 'onnx', not 'torch'$"):
        Reranker.load(bundles["onnx"], backend="torch")
    with pytest.raises(UnknownBackend, match=r"^a reranker's onnx bundle runs on the CPU for now"):
        build_bundle(model_dirs["bert"], tmp_path / "cuda", backend="onnx", device="cuda", precision="fp16")
    with pytest.raises(BundleError, match=r"pooling, normalization and max length are its own$"):
        build_bundle(model_dirs["bert"], tmp_path / "pooled", pooling="mean")
    monkeypatch.setitem(parity_module.SCORE_TOLERANCES, "fp32", 0.0)  # no engine is bit-exact
    with pytest.raises(
        ParityError, match=r"reranker onnx fp32: parity pair \d+ scores .* over the allowed 0.0"
    ):
        build_bundle(model_dirs["bert"], tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
