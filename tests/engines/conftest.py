"""Engine-test fixtures: bundles and reference vectors built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_bundle_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Bundles that `Embedder.load(model_dir, backend="onnx")` builds go to a temp dir, not ~/.cache."""
    old = os.environ.get("VECQ_CACHE_DIR")
    os.environ["VECQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("vecq-cache"))
    yield
    if old is None:
        os.environ.pop("VECQ_CACHE_DIR", None)
    else:
        os.environ["VECQ_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def varied_texts() -> list[str]:
    """The shipped parity texts (60: many scripts, emoji, code, URLs, whitespace, single characters,
    texts far over 512 tokens) plus a few more of the same kinds."""
    from vecq.engines.parity import parity_texts

    extra = [
        "Où est la gare ? Je cherche le train de 8h15.",
        "混合 text with 日本語 and English and 한국어 in one line",
        "print('hello, world')  # 🐍",
        "ftp://files.example.net/pub/data.tar.gz",
        " leading and trailing spaces ",
        "x",
    ]
    return parity_texts() + extra


@pytest.fixture(scope="session")
def st_vectors(default_model_dir: Path, varied_texts: list[str]) -> np.ndarray:
    """sentence-transformers' own vectors of `varied_texts` (max_seq_length 256, normalized)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir), device="cpu")
    return model.encode(varied_texts, batch_size=16, convert_to_numpy=True)


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vecq build default --out ...` (fp32 ONNX, CPU shapes), run once through the CLI."""
    from click.testing import CliRunner

    from vecq.worker.cli import main

    out = tmp_path_factory.mktemp("bundles") / "minilm"
    result = CliRunner().invoke(main, ["build", "default", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def default_onnx(default_bundle: Path):
    from vecq.engines import Embedder

    return Embedder.load(default_bundle)


@pytest.fixture(scope="session")
def default_torch(default_model_dir: Path):
    from vecq.engines import Embedder

    return Embedder.load(default_model_dir, backend="torch")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vecq.engines.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(tiny_bert_dir, out)
    return out
