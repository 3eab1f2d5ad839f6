"""The backend registry: every engine vecq knows, by name, in one table.

Each backend is one module of this package with a `for_bundle(root, manifest, *, device,
**options)` factory and, unless it runs only from a built bundle, a `for_model_dir(model_dir, *,
spec, shapes, device, **options)` one; `PRECISIONS` says what `vecq build` makes for it per
device.  Adding a backend is its file plus one line in `BACKENDS`; the command line's `--backend`
choices are `names()`.  Modules are imported only when an engine is made, so reading this table
imports no torch or onnxruntime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import UnknownBackend

if TYPE_CHECKING:
    from ..base import Engine
    from ..bundle import Manifest
    from ..shapes import ShapeSet
    from ..spec import ModelSpec


@dataclass(frozen=True)
class Backend:
    """One registry line."""

    name: str
    module: str  # the module of this package that makes its engines
    #: Runs only from a built bundle: a model dir is built into a cached bundle first.
    bundled: bool = False
    #: Why it cannot be served, when it cannot (its one wording, wherever it is asked for).
    refusal: str | None = None

    def load(self) -> ModuleType:
        if self.refusal is not None:
            raise UnknownBackend(self.refusal)
        return importlib.import_module(f"{__name__}.{self.module}")


TENSORRT_REFUSAL = (
    "backend 'tensorrt' is not served: vecq's native TensorRT engine is written to TensorRT 10's "
    "API but has never run (TensorRT cannot be installed where vecq is tested); use onnx or torch"
)

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "torch"),
        Backend("onnx", "onnx", bundled=True),
        Backend("tensorrt", "tensorrt", bundled=True, refusal=TENSORRT_REFUSAL),
        Backend("null", "null"),
    )
}


def names() -> tuple[str, ...]:
    """Every backend name, in the registry's order (the CLI's `--backend` choices)."""
    return tuple(BACKENDS)


def get(name: str) -> Backend:
    """The registry line of `name`, or `UnknownBackend` listing the known ones."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise UnknownBackend(f"backend {name!r} is not one of {', '.join(BACKENDS)}")
    return backend


def for_model_dir(
    name: str, model_dir: Path, *, spec: ModelSpec, shapes: ShapeSet | None, device: str, **options: Any
) -> Engine:
    """An engine of backend `name` straight from a model dir (`shapes` None: the backend's default)."""
    backend = get(name)
    assert not backend.bundled, f"backend {name!r} runs from a bundle only (vecq bug: build it first)"
    engine: Engine = backend.load().for_model_dir(
        model_dir, spec=spec, shapes=shapes, device=device, **options
    )
    return engine


def for_bundle(name: str, root: Path, manifest: Manifest, *, device: str, **options: Any) -> Engine:
    """An engine of backend `name` serving exactly a verified bundle's shapes."""
    engine: Engine = get(name).load().for_bundle(root, manifest, device=device, **options)
    return engine


def precisions(name: str, device: str) -> tuple[str, ...]:
    """What `vecq build --backend name` makes for a device kind ("cpu", "cuda"); refuses a
    backend that is not built into bundles."""
    module = get(name).load()
    made: dict[str, tuple[str, ...]] = getattr(module, "PRECISIONS", {})
    if not made:
        raise UnknownBackend(f"backend {name!r} is not built into bundles (build onnx or torch)")
    return made.get(device, ())
