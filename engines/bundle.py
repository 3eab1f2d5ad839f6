"""The bundle: a directory holding everything a worker needs, described by `manifest.json`.

A bundle is `manifest.json`, the tokenizer files and the backend's artifact (`model.onnx`, or the
weights for a torch bundle).  The manifest carries the model facts (dim, pooling, normalization,
max length), the shapes the engine serves — so the worker's planner and the engine never
disagree — a sha256 of every file, the parity report and the library versions.  Loading verifies
every checksum first and refuses anything it cannot trust with one line naming the file.

This module only describes and checks bundles: `build.py` writes them, `Embedder.from_bundle`
loads one, and `backends/` make its engine.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import BundleError
from .parity import ParityReport, ScoreParity
from .shapes import ShapeSet
from .spec import ModelSpec, Pooling

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: CUDA ONNX bundles' padding-free twin of `model.onnx` (ORT's packing mode).
PACKED_FILE = "model.packed.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
TORCH_FILES = ("config.json", "model.safetensors")
Precision = Literal["fp32", "fp16", "bf16", "int8"]
# Options that tune how a bundle runs, not what it is.  `graphs`: one CUDA graph per shape on
# CUDA (default on); `packed`: torch on CUDA packs batches into token buffers (default on, where the
# model allows); `packed_from_batch`: batches this large use ORT's packed graph when there is one.
ENGINE_OPTIONS = ("providers", "threads", "spinning", "graphs", "packed", "packed_from_batch")


class Manifest(BaseModel):
    """What `vecq build` wrote, and all a loader needs to trust and run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    name: str
    dim: int
    pooling: Pooling
    normalize: bool
    max_seq_len: int
    precision: Precision
    backend: Literal["onnx", "torch"]
    device: str  # what it was built (and parity-checked) for: "cpu" or "cuda"
    graph: str  # how the artifact was made, e.g. "exported", "fused+fp16", "int8 (24/36 MatMul)"
    fp32_nodes: list[str]  # int8 only: nodes left in fp32 to keep parity
    shapes: list[list[int]]
    files: dict[str, str]  # path relative to the bundle → sha256
    parity: ParityReport | ScoreParity
    versions: dict[str, str]
    created: datetime
    #: "rerank": a cross-encoder's bundle (dim 1, one score per pair), loaded by `Reranker`;
    #: `activation` is the one `CrossEncoder.predict` applies by default ("sigmoid", "identity").
    task: Literal["embed", "rerank"] = "embed"
    activation: str | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(
            name=self.name,
            dim=self.dim,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_len=self.max_seq_len,
        )

    @property
    def shape_set(self) -> ShapeSet:
        return ShapeSet.from_list(self.shapes)

    def require_backend(self, root: Path, backend: str) -> None:
        """A bundle's artifact runs on the backend it was built for only."""
        if backend != self.backend:
            raise BundleError(f"{root}: built for backend {self.backend!r}, not {backend!r}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(root: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(root / name) for name in sorted(names)}


def read_manifest(root: str | Path) -> Manifest:
    """The bundle's manifest, or `BundleError` if it is missing, unreadable or of another format."""
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not a vecq bundle, or an incomplete one)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise BundleError(f"{path}: no format_version (not a vecq bundle manifest)")
    if data["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format version {data['format_version']!r} is not supported by this vecq "
            f"(expects {FORMAT_VERSION}; rebuild the bundle with `vecq build`)"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise BundleError(f"{path}: field {field!r}: {err['msg'].lower()}") from None


def verify_files(root: str | Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists and has its checksum; the backend's artifact is listed."""
    root = Path(root)
    required = ["tokenizer.json", "model.onnx" if manifest.backend == "onnx" else "config.json"]
    for name in required:
        if name not in manifest.files:
            raise BundleError(f"{root / MANIFEST}: does not list {name} (incomplete bundle)")
    for name, digest in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: missing (incomplete bundle)")
        if sha256_file(path) != digest:
            raise BundleError(f"{path}: checksum mismatch (corrupted or modified since the build)")


def write_manifest(tmp: Path, files: list[str], **fields: Any) -> Manifest:
    """The manifest of the bundle assembled in `tmp` (`files` checksummed there, this vecq's
    format and library versions, now), written to `tmp/manifest.json` and returned."""
    from datetime import UTC

    manifest = Manifest(
        format_version=FORMAT_VERSION, files=checksums(tmp, files), versions=library_versions(),
        created=datetime.now(UTC), **fields,
    )  # fmt: skip
    (tmp / MANIFEST).write_text(manifest_json(manifest), encoding="utf-8")
    return manifest


def manifest_json(manifest: Manifest) -> str:
    """Indented JSON with each [batch, seq_len] shape on one line (CPU bundles have ~1000)."""
    text = manifest.model_dump_json(indent=2)
    return re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text) + "\n"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle's artifact depends on (recorded, not enforced)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("vecq", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


def copy_torch_files(src: Path, dst: Path) -> list[str]:
    """A torch bundle's weights and config, copied: safetensors only (no pickled weights)."""
    if not (src / "model.safetensors").is_file():
        raise BundleError(f"{src}: no model.safetensors (torch bundles copy safetensors weights only)")
    return copy_files(src, dst, TORCH_FILES)


def copy_files(src: Path, dst: Path, names: Sequence[str]) -> list[str]:
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
