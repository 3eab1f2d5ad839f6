"""Bundles built on first use for a plain model dir, cached by content.

`Embedder.load(model_dir, backend="onnx")` (and so `vecq embed` and `vecq worker --model`) runs
an ONNX engine, which only exists inside a bundle: the first call builds one (export, optimize,
parity) into the cache, later calls load it.  Same key, same bundle: the key digests the model
files, every build option and the build recipe itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .bundle import FORMAT_VERSION, read_manifest, sha256_file, verify_files
from .errors import BundleError
from .shapes import ShapeSet
from .spec import ModelSpec

log = logging.getLogger(__name__)

#: The line said before a build, so that a minute of silence is explained (`vecq embed` shows it).
_BUILDING = {
    "fp32": "building an ONNX bundle of %s (%s) once: export and a parity check; cached in %s",
    "int8": "building an ONNX bundle of %s (%s) once: quantizing it MatMul by MatMul until parity "
    "holds (about 80 s for all-MiniLM-L6-v2 on 2 CPU cores); cached in %s for later runs",
}

#: The modules whose code decides what a built bundle contains.
RECIPE_MODULES = (
    "build.py", "export.py", "onnx_build.py", "parity.py", "parity_texts.json", "rerank_build.py",
    "cross_encoder.py",
)  # fmt: skip


def cache_dir() -> Path:
    """Where built bundles are cached: `$VECQ_CACHE_DIR/bundles`, else `~/.cache/vecq/bundles`."""
    base = os.environ.get("VECQ_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "vecq") / "bundles"


def cache_key(model_dir: Path, *, spec: ModelSpec, shapes: ShapeSet, device: str, precision: str) -> str:
    """A digest of the model files' contents, every build option and the build recipe itself.

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


def cached_bundle(
    model_dir: Path, *, backend: str, spec: ModelSpec, shapes: ShapeSet, device: str, precision: str
) -> Path:
    """The cached bundle of `model_dir` for these options, built now if it is not there (or broken)."""
    from .build import build_bundle

    kind = "cuda" if device.startswith("cuda") else "cpu"
    root = cache_dir() / cache_key(model_dir, spec=spec, shapes=shapes, device=kind, precision=precision)
    try:
        verify_files(root, read_manifest(root))
    except BundleError:
        log.info(_BUILDING[precision if precision in _BUILDING else "fp32"], spec.name, precision, root)
        build_bundle(
            model_dir, root, backend=backend, device=kind, precision=precision, shapes=shapes,
            pooling=spec.pooling, normalize=spec.normalize, max_seq_len=spec.max_seq_len, name=spec.name,
        )  # fmt: skip
    return root
