"""Bad input: each a typed exception with a one-line message naming what was wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vecq.engines import BadInput, Embedder, ModelNotFound, TextTooLong, UnknownBackend


@pytest.fixture(scope="module")
def tiny_null(tiny_bert_dir: Path) -> Embedder:
    return Embedder.load(tiny_bert_dir, backend="null")


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", 3], "texts[1]: expected str, got int"),
        (["ok", None], "texts[1]: expected str, got NoneType"),
        (None, "texts: expected a list of str, got NoneType"),
        ("just a string", "texts: expected a list of str, got str"),
        ([], "texts: empty list (pass at least one text)"),
    ],
)
def test_bad_texts_are_refused_naming_the_item(tiny_null: Embedder, texts, message: str) -> None:
    with pytest.raises(BadInput) as err:
        tiny_null.embed(texts)
    assert str(err.value) == message


def test_an_empty_string_gets_a_real_vector(default_torch) -> None:
    v = default_torch.embed(["", "hello"])
    assert v.shape == (2, 384) and np.isfinite(v).all()
    assert abs(float(np.linalg.norm(v[0])) - 1.0) < 1e-5


def test_truncate_false_refuses_an_over_long_text(tiny_bert_dir: Path) -> None:
    strict = Embedder.load(tiny_bert_dir, backend="null", truncate=False)
    assert strict.embed(["short"]).shape == (1, 32)
    with pytest.raises(TextTooLong, match=r"texts\[1\]: longer than the model's max of 128 tokens"):
        strict.embed(["short", "中" * 500])
    lenient = Embedder.load(tiny_bert_dir, backend="null")
    assert lenient.embed(["中" * 500]).shape == (1, 32)


def _partial_copy(src: Path, dst: Path, drop: str) -> Path:
    shutil.copytree(src, dst)
    (dst / drop).unlink()
    return dst


def test_model_dir_without_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    bad = _partial_copy(tiny_bert_dir, tmp_path / "m", "model.safetensors")
    with pytest.raises(ModelNotFound, match=r"m: no weights \(expected one of model.safetensors"):
        Embedder.load(bad, backend="torch")


def test_model_dir_without_tokenizer(tiny_bert_dir: Path, tmp_path: Path) -> None:
    bad = _partial_copy(tiny_bert_dir, tmp_path / "m", "tokenizer.json")
    with pytest.raises(ModelNotFound, match=r"m: no tokenizer.json"):
        Embedder.load(bad, backend="onnx")


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not a directory"):
        Embedder.load(tmp_path / "absent")


def test_unknown_backend(tiny_bert_dir: Path) -> None:
    with pytest.raises(UnknownBackend) as err:
        Embedder.load(tiny_bert_dir, backend="tpu")
    assert str(err.value) == "backend 'tpu' is not one of torch, onnx, tensorrt, null"
    with pytest.raises(UnknownBackend, match="backend 'tensorrt' is not served"):
        Embedder.load(tiny_bert_dir, backend="tensorrt")


def test_torch_half_precision_needs_cuda(tiny_bert_dir: Path) -> None:
    with pytest.raises(UnknownBackend, match="precision 'fp16' needs a CUDA device"):
        Embedder.load(tiny_bert_dir, backend="torch", precision="fp16")


def test_a_hugging_face_id_loads_from_the_local_cache_and_a_missing_one_is_one_line(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """`Embedder.load("org/name")` finds the model where the Hugging Face cache keeps it (the
    hub's own layout: models--org--name/snapshots/<rev>, refs/main), named after the id, not the
    snapshot; an id not cached is `ModelNotFound` naming it, and nothing is downloaded."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-zh"
    shutil.copytree(tiny_bert_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    emb = Embedder.load("acme/tiny-zh", backend="null")
    assert emb.spec.name == "tiny-zh"
    np.testing.assert_array_equal(
        emb.embed(["你好"]), Embedder.load(tiny_bert_dir, backend="null").embed(["你好"])
    )
    with pytest.raises(
        ModelNotFound, match=r"^acme/absent: not a directory, and not in the local Hugging Face cache"
    ):
        Embedder.load("acme/absent", backend="null")
