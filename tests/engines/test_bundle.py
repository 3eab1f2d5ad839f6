"""`vecq build` writes a verified bundle; loading refuses anything it cannot trust."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vecq.engines import BundleError, Embedder
from vecq.engines.bundle import FORMAT_VERSION, read_manifest
from vecq.engines.parity import cosines
from vecq.worker.cli import main


def test_build_of_the_default_model_passes_fp32_parity(default_bundle: Path) -> None:
    manifest = read_manifest(default_bundle)
    assert manifest.parity.min_cosine >= 0.99999 and manifest.parity.n_texts >= 50
    assert (manifest.name, manifest.dim, manifest.pooling, manifest.normalize) == (
        "all-minilm-l6-v2",
        384,
        "mean",
        True,
    )
    assert (manifest.backend, manifest.precision, manifest.max_seq_len) == ("onnx", "fp32", 256)
    assert {"model.onnx", "tokenizer.json"} <= set(manifest.files)
    assert set(manifest.versions) >= {"vecq", "torch", "transformers", "onnx", "onnxruntime"}
    assert sorted(p.name for p in default_bundle.iterdir()) == sorted([*manifest.files, "manifest.json"])


def test_loaded_bundle_serves_the_manifest_shapes(default_bundle: Path, default_onnx) -> None:
    manifest = read_manifest(default_bundle)
    assert default_onnx.shapes == manifest.shape_set and default_onnx.dim == 384
    v = default_onnx.embed(["hello", ""])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_one_flipped_byte_in_model_onnx_is_refused_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: checksum mismatch") as err:
        Embedder.load(bundle)
    assert "\n" not in str(err.value)


def test_missing_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json: missing \(incomplete bundle\)"):
        Embedder.load(bundle)


def test_missing_manifest_field_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    del data["dim"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: field 'dim': field required"):
        Embedder.load(bundle)


def test_unknown_format_version_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"format version {FORMAT_VERSION + 1} is not supported"):
        Embedder.load(bundle)


def test_bundle_backend_is_its_own_or_null(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="built for backend 'onnx', not 'torch'"):
        Embedder.load(tiny_bundle, backend="torch")
    null = Embedder.load(tiny_bundle, backend="null")
    assert null.shapes == read_manifest(tiny_bundle).shape_set


def test_torch_bundle_round_trips(tiny_bert_dir: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from vecq.engines.build import build_bundle

    manifest = build_bundle(tiny_bert_dir, tmp_path / "t", backend="torch", batch_sizes=[1, 4], seq_lens=[32])
    assert manifest.parity.min_cosine >= 0.99999 and len(manifest.shapes) == 4
    texts = ["今天天气很好", "", "mixed 中文"]
    a, b = Embedder.load(tmp_path / "t").embed(texts), Embedder.load(tiny_bundle).embed(texts)
    assert cosines(a, b).min() >= 0.99999


def test_int8_bundle_keeps_parity_on_the_tiny_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from vecq.engines.build import build_bundle

    manifest = build_bundle(
        tiny_bert_dir, tmp_path / "q", precision="int8", batch_sizes=[1, 8], seq_lens=[32, 128]
    )
    assert manifest.precision == "int8" and manifest.parity.min_cosine >= 0.99
    assert manifest.graph.startswith("int8 (")


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.output.strip() == f"vecq: {tmp_path / 'nope'}: not a directory"
    result = CliRunner().invoke(
        main, ["build", "default", "--out", str(tmp_path / "b"), "--precision", "fp16"]
    )
    assert result.exit_code == 2
    assert (
        result.output.strip() == "vecq: precision 'fp16' is not available for onnx on cpu (choose fp32, int8)"
    )


def test_build_refuses_to_overwrite_a_directory_that_is_not_a_bundle(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from vecq.engines.build import build_bundle

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a vecq bundle"):
        build_bundle(tiny_bert_dir, tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_cache_key_follows_the_build_recipe(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed export/quantize recipe must not be served an old cached bundle."""
    from vecq.engines import cache
    from vecq.engines.shapes import ShapeSet
    from vecq.engines.spec import read_spec

    spec = read_spec(tiny_bert_dir)
    shapes = ShapeSet.for_cpu(max_seq_len=spec.max_seq_len)

    def key() -> str:
        return cache.cache_key(tiny_bert_dir, spec=spec, shapes=shapes, device="cpu", precision="int8")

    first = key()
    assert key() == first
    monkeypatch.setattr(cache, "RECIPE_MODULES", cache.RECIPE_MODULES[:-1])
    assert key() != first
