"""The bundle: a directory holding everything a worker needs, described by `manifest.json`.

A bundle is `manifest.json`, the tokenizer files and the backend's artifact (`model.onnx`, or the
weights for a torch bundle).  The manifest carries the model facts (dim, pooling, normalization,
max length), the shapes the engine serves — so the worker's planner and the engine never
disagree — a sha256 of every file, the parity report and the library versions.  Loading verifies
every checksum first and refuses anything it cannot trust with one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .base import Engine
from .errors import BundleError, UnknownBackend
from .parity import ParityReport
from .shapes import ShapeSet
from .spec import ModelSpec, Pooling

if TYPE_CHECKING:
    from .embedder import Embedder

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
Precision = Literal["fp32", "fp16", "bf16", "int8"]
# Options that tune how a bundle runs, not what it is.  `graphs`: one CUDA graph per shape on
# CUDA (default on); `packed_from_batch`: batches this large use the packed graph when there is one.
ENGINE_OPTIONS = ("providers", "threads", "spinning", "graphs", "packed_from_batch")


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
    parity: ParityReport
    versions: dict[str, str]
    created: datetime

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


def load_bundle(
    root: str | Path,
    *,
    backend: str | None = None,
    device: str = "cpu",
    truncate: bool = True,
    **options: Any,
) -> Embedder:
    """An `Embedder` over a verified bundle; `backend` may be left out (the bundle's own) or "null".

    Options that would change what the bundle is (pooling, precision...) are refused: rebuild it.
    """
    from .embedder import Embedder
    from .tokenizer import TextTokenizer

    root = Path(root)
    manifest = read_manifest(root)
    verify_files(root, manifest)
    options.pop("name", None)
    for key in options:
        if key not in ENGINE_OPTIONS:
            raise BundleError(f"{root}: option {key!r} cannot change a built bundle (rebuild it)")
    engine = bundle_engine(root, manifest, backend=backend or manifest.backend, device=device, **options)
    tokenizer = TextTokenizer.from_dir(root, max_seq_len=manifest.max_seq_len)
    return Embedder(spec=manifest.spec, tokenizer=tokenizer, engine=engine, truncate=truncate)


def bundle_engine(root: Path, manifest: Manifest, *, backend: str, device: str, **options: Any) -> Engine:
    """The engine of a verified bundle, serving exactly the manifest's shapes."""
    shapes = manifest.shape_set
    if backend == "null":
        from .backends.null import NullEngine

        return NullEngine(shapes=shapes, dim=manifest.dim)
    if backend == "tensorrt":
        raise UnknownBackend(
            "backend 'tensorrt': vecq does not build TensorRT bundles yet (use onnx or torch)"
        )
    if backend not in ("onnx", "torch"):
        raise UnknownBackend(f"backend {backend!r} is not one of torch, onnx, tensorrt, null")
    if backend != manifest.backend:
        raise BundleError(f"{root}: built for backend {manifest.backend!r}, not {backend!r}")
    graphs = bool(options.pop("graphs", True))
    if backend == "onnx":
        if device.startswith("cuda") and options.get("providers") in (None, "cuda"):
            return _onnx_cuda_engine(root, manifest, device, graphs=graphs, **options)
        from .backends.onnx import OnnxEngine

        options.pop("packed_from_batch", None)
        return OnnxEngine(
            root / "model.onnx", shapes=shapes, dim=manifest.dim, device=device,
            cache_dir=root / "trt-cache", **options,
        )  # fmt: skip
    from .backends.torch import TorchEngine

    engine = TorchEngine.from_model_dir(
        root, spec=manifest.spec, shapes=shapes, device=device, precision=manifest.precision
    )
    if device.startswith("cuda") and graphs:
        from .backends.torch_graphs import TorchGraphEngine

        return TorchGraphEngine(engine.module, shapes=shapes, dim=manifest.dim, device=device)
    return engine


def _onnx_cuda_engine(root: Path, manifest: Manifest, device: str, *, graphs: bool, **options: Any) -> Engine:
    """Fixed-shape ORT CUDA: a CUDA graph per shape, and the packed twin for large batches."""
    from .backends.onnx_cuda import HybridCudaEngine, OnnxCudaEngine

    shapes, dim = manifest.shape_set, manifest.dim
    device_id = int(device.partition(":")[2] or 0)
    fused = OnnxCudaEngine(root / "model.onnx", shapes=shapes, dim=dim, device_id=device_id, graphs=graphs)
    if "model.packed.onnx" not in manifest.files:
        return fused
    packed = OnnxCudaEngine(
        root / "model.packed.onnx", shapes=shapes, dim=dim, device_id=device_id, graphs=False
    )
    return HybridCudaEngine(fused, packed, packed_from_batch=int(options.get("packed_from_batch") or 32))


# --- the cache behind `Embedder.load(model_dir, backend="onnx")` ------------------------------
#: The modules whose code decides what a built bundle contains.
RECIPE_MODULES = ("build.py", "export.py", "onnx_build.py", "parity.py", "parity_texts.json")


def cache_dir() -> Path:
    """Where built bundles are cached: `$VECQ_CACHE_DIR/bundles`, else `~/.cache/vecq/bundles`."""
    base = os.environ.get("VECQ_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "vecq") / "bundles"


def cache_key(model_dir: Path, *, spec: ModelSpec, shapes: ShapeSet, device: str, precision: str) -> str:
    """A digest of the model files' contents, every build option and the build recipe itself:
    same key, same bundle.

    The recipe (the source of the modules that export, optimize and quantize) is part of the key
    because vecq's version alone did not change when the int8 recipe did, and the cache kept
    serving bundles built the old way."""
    from importlib.metadata import version

    h = hashlib.sha256()
    options = [FORMAT_VERSION, version("vecq"), spec.model_dump(), shapes.to_list(), device, precision]
    h.update(json.dumps(options, sort_keys=True).encode())
    for module in RECIPE_MODULES:
        h.update((Path(__file__).parent / module).read_bytes())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and ".git" not in p.parts):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0" + sha256_file(path).encode())
    return h.hexdigest()[:32]


def onnx_engine_for_model_dir(
    model_dir: str | Path, *, spec: ModelSpec, shapes: ShapeSet, device: str, **options: Any
) -> Engine:
    """An ONNX engine for a plain model dir: build a bundle once (cached by content), then load it."""
    from .build import build_bundle

    precision = options.pop("precision", "fp32")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    key = cache_key(Path(model_dir), spec=spec, shapes=shapes, device=kind, precision=precision)
    root = cache_dir() / key
    try:
        manifest = read_manifest(root)
        verify_files(root, manifest)
    except BundleError:
        manifest = build_bundle(
            model_dir, root, backend="onnx", device=kind, precision=precision, shapes=shapes,
            pooling=spec.pooling, normalize=spec.normalize, max_seq_len=spec.max_seq_len, name=spec.name,
        )  # fmt: skip
    engine_options = {k: v for k, v in options.items() if k in ENGINE_OPTIONS}
    return bundle_engine(root, manifest, backend="onnx", device=device, **engine_options)
