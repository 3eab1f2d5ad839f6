"""Every served architecture against sentence-transformers, on torch CPU and ONNX CPU.

Tiny random models (hidden 32, 2 layers) of each architecture in the sentence-transformers
layout, built on the spot (`random_model.write_random_encoder`), each with the tokenizer kind its
real models use.  Their `SentenceTransformer.encode` vectors are the reference: vecq must match
them for every text of the parity set (Chinese, emoji, over-length texts included), alone or in a
batch, and truncate where sentence-transformers does -- at the model's own max, past 512 too.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder, UnsupportedModel
from vecq.engines.architectures import ARCHITECTURES
from vecq.engines.parity import cosines
from vecq.engines.random_model import write_random_encoder

KINDS = tuple(ARCHITECTURES)
MAX_POSITIONS = 128  # the parity set's long texts are far over it in every tokenizer
FP32 = 0.99999

pytestmark = pytest.mark.timeout(600)


def _st_encode(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, batch_size=16)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model per architecture; ModernBERT with a 16-token local window, so that its
    sliding-window layers and its global ones both see texts longer than the window."""
    root = tmp_path_factory.mktemp("architectures")
    extra = {"modernbert": {"local_attention": 16}}
    return {
        kind: write_random_encoder(
            root / kind, model_type=kind, max_positions=MAX_POSITIONS, **extra.get(kind, {})
        )
        for kind in KINDS
    }


@pytest.fixture(scope="module")
def references(model_dirs: dict[str, Path], varied_texts: list[str]) -> dict[str, np.ndarray]:
    return {kind: _st_encode(d, varied_texts) for kind, d in model_dirs.items()}


@pytest.fixture(scope="module")
def embedders(model_dirs: dict[str, Path]) -> dict[tuple[str, str], Embedder]:
    return {
        (kind, backend): Embedder.load(d, backend=backend)
        for kind, d in model_dirs.items()
        for backend in ("torch", "onnx")
    }


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_sentence_transformers(kind, backend, embedders, references, varied_texts) -> None:
    vectors = embedders[kind, backend].embed(varied_texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(varied_texts), 32)
    cos = cosines(vectors, references[kind])
    assert cos.min() >= FP32, f"{kind} {backend}: text {cos.argmin()} has cosine {cos.min():.7f}"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_text_alone_equals_it_in_a_batch(kind, backend, embedders, varied_texts) -> None:
    embedder = embedders[kind, backend]
    probes = [varied_texts[i] for i in (0, 12, 17, 29, 44, 45, 55, 58)]  # ..., "", "a", long ones
    together = embedder.embed(varied_texts + probes)[-len(probes) :]
    alone = np.stack([embedder.embed([t])[0] for t in probes])
    assert cosines(together, alone).min() >= FP32


@pytest.mark.parametrize("kind", KINDS)
def test_over_length_texts_are_cut_at_the_model_max(kind, embedders, varied_texts) -> None:
    tokenizer = embedders[kind, "torch"].tokenizer
    assert embedders[kind, "torch"].spec.max_seq_len == MAX_POSITIONS
    lengths = tokenizer.encode(varied_texts).lengths
    assert lengths.max() == MAX_POSITIONS and (lengths == MAX_POSITIONS).sum() >= 5
    from vecq.engines.errors import TextTooLong

    with pytest.raises(TextTooLong, match=f"max of {MAX_POSITIONS} tokens"):
        embedders[kind, "torch"].embed(varied_texts, truncate=False)


def test_spec_reads_each_architecture(model_dirs: dict[str, Path]) -> None:
    from vecq.engines.spec import read_spec

    for kind, d in model_dirs.items():
        spec = read_spec(d)
        assert (spec.dim, spec.pooling, spec.normalize, spec.max_seq_len) == (32, "mean", True, 128), kind
    import json

    config = json.loads((model_dirs["roberta"] / "config.json").read_text())
    assert config["max_position_embeddings"] == 130  # RoBERTa's 2 reserved positions on top
    distil = json.loads((model_dirs["distilbert"] / "config.json").read_text())
    assert "hidden_size" not in distil and distil["dim"] == 32


@pytest.mark.parametrize("kind", KINDS)
def test_ort_optimizer_fuses_per_architecture_on_cpu(kind, model_dirs, references, varied_texts, tmp_path):
    """The CUDA build's graph (ORT's transformer optimizer with the architecture's model type),
    run on the CPU provider in fp32: fused attention where ORT has it, the plain graph else."""
    import onnx

    from vecq.engines.backends.onnx import OnnxEngine
    from vecq.engines.batching import embed_texts
    from vecq.engines.export import export_onnx, optimize
    from vecq.engines.pooled import load_pooled
    from vecq.engines.shapes import default_shapes
    from vecq.engines.spec import read_spec
    from vecq.engines.tokenizer import TextTokenizer

    spec = read_spec(model_dirs[kind])
    module = load_pooled(model_dirs[kind], spec, attn_implementation="eager")
    exported = export_onnx(module, tmp_path / "exported.onnx")
    heads = module.encoder.config.num_attention_heads
    fused = optimize(
        exported, tmp_path / "fused.onnx", spec=spec, num_heads=heads, fp16=False, use_gpu=False,
        model_type=kind,
    )  # fmt: skip
    ops = collections.Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    assert ops["Attention"] == (0 if kind == "modernbert" else 2), ops
    engine = OnnxEngine(fused, shapes=default_shapes(spec.max_seq_len, "cpu"), dim=spec.dim)
    tokenizer = TextTokenizer.from_dir(model_dirs[kind], max_seq_len=spec.max_seq_len)
    cos = cosines(embed_texts(tokenizer, engine, varied_texts), references[kind])
    assert cos.min() >= FP32, f"text {cos.argmin()}: {cos.min():.7f}"


@pytest.mark.parametrize("kind", KINDS)
def test_int8_on_cpu_holds_parity(kind, model_dirs, references, varied_texts, tmp_path) -> None:
    from vecq.engines.build import build_bundle

    manifest = build_bundle(model_dirs[kind], tmp_path / "int8", precision="int8")
    assert manifest.precision == "int8" and manifest.parity.passed
    vectors = Embedder.load(tmp_path / "int8").embed(varied_texts)
    assert cosines(vectors, references[kind]).min() >= 0.99


@pytest.mark.parametrize(
    ("kind", "positions", "extra"),
    [("xlm-roberta", 2048, {}), ("modernbert", 1024, {"local_attention": 16})],
)
def test_a_model_longer_than_512_truncates_at_its_own_max(kind, positions, extra, varied_texts, tmp_path):
    model_dir = write_random_encoder(tmp_path / kind, model_type=kind, max_positions=positions, **extra)
    long_text = " ".join(varied_texts[:50]) * 20
    texts = [long_text, long_text[:2000], *varied_texts[40:60]]  # the second: past 512 tokens
    reference = _st_encode(model_dir, texts)
    for backend in ("torch", "onnx"):
        embedder = Embedder.load(model_dir, backend=backend)
        assert embedder.spec.max_seq_len == positions
        lengths = embedder.tokenizer.encode(texts).lengths
        assert lengths[0] == positions and 512 < lengths[1] <= positions, lengths[:2]
        cos = cosines(embedder.embed(texts), reference)
        assert cos.min() >= FP32, f"{backend}: text {cos.argmin()}: {cos.min():.7f}"


def test_sentence_transformers_max_seq_length_wins_within_the_positions(tmp_path: Path) -> None:
    from vecq.engines.spec import read_spec

    short = write_random_encoder(
        tmp_path / "a", model_type="xlm-roberta", max_positions=1024, max_seq_length=300
    )
    assert read_spec(short).max_seq_len == 300
    over = write_random_encoder(tmp_path / "b", model_type="roberta", max_positions=256, max_seq_length=4096)
    assert read_spec(over).max_seq_len == 256
    assert read_spec(over, max_seq_len=100).max_seq_len == 100


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_an_unsupported_architecture_is_one_line_everywhere(kind: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vecq.engines.build import build_bundle
    from vecq.worker.cli import main

    model_dir = write_random_encoder(tmp_path / kind, model_type=kind)
    expected = f"architecture (model_type) '{kind}' is not served by vecq (supported: {', '.join(KINDS)})"
    for load in (
        lambda: Embedder.load(model_dir, backend="torch"),
        lambda: Embedder.load(model_dir, backend="onnx"),
        lambda: build_bundle(model_dir, tmp_path / "bundle"),
    ):
        with pytest.raises(UnsupportedModel) as caught:
            load()
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "bundle").exists()
    corpus = tmp_path / "in.txt"
    corpus.write_text("a\nb\n", encoding="utf-8")
    out = str(tmp_path / "v.npy")
    for verb in (["build", str(model_dir), "--out", str(tmp_path / "b2")],
                 ["embed", str(corpus), "--out", out, "--model", str(model_dir)]):  # fmt: skip
        result = CliRunner().invoke(main, verb)
        assert result.exit_code != 0 and expected in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
