"""`Reranker`: a cross-encoder's tokenizer, shapes and engine behind `score(query, documents)`.

The reranking twin of `Embedder`: pairs are tokenized as `sentence_transformers.CrossEncoder`
tokenizes them (`TextTokenizer.encode_pairs`), planned into the engine's declared shapes and run
through the same padded path as texts (`batching.run_padded`), by the same engines (`TorchEngine`,
`OnnxEngine`) over a `ScoringEncoder` (`cross_encoder.py`) whose output is one score per row.
A model dir on ONNX is built once into a reranker bundle in the cache (`cache.cached_bundle`, as
an embedder's is) and served from it.  On CUDA the model runs in torch fp16 (or bf16) through the
padding-free packed engine (`PackedScorer` in `PackedGraphEngine`: one graph per token buffer)
where the packed encoder serves its architecture, else through one CUDA graph per padded shape.
`vecq build` of a cross-encoder writes a reranker bundle (`rerank_build.py`); ONNX Runtime on
CUDA comes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Engine
from .batching import check_texts, run_padded
from .bundle import MANIFEST, read_manifest, verify_files
from .errors import BadInput, BundleError
from .prompts import Prompts
from .rerank_engine import CUDA_PRECISIONS, RERANK_BACKENDS, check_choice, is_cross_encoder, make_engine
from .shapes import ShapeSet, default_shapes
from .spec import ModelSpec, check_model_dir, resolve_model
from .tokenizer import TextTokenizer


class Reranker:
    """(query, documents) in, one float32 relevance score per document out.

    It shows the serving worker what an `Embedder` does (`tokenizer`, `engine`, `shapes`, `dim`,
    `prompts`, `name`), and `scores_pairs`: its jobs carry a query, tokenized with each text as
    a pair (`TextTokenizer.encode_pairs`); their results are (n, 1) scores."""

    scores_pairs = True
    #: A reranker has no prompts (the worker's admission reads them).
    prompts = Prompts()

    def __init__(self, *, spec: ModelSpec, tokenizer: TextTokenizer, engine: Engine) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.engine = engine

    @classmethod
    def load(
        cls, path: str | Path, *, backend: str | None = None, device: str = "cpu",
        shapes: ShapeSet | None = None, threads: int | None = None, precision: str | None = None,
        packed: bool = True,
    ) -> Reranker:  # fmt: skip
        """A cross-encoder model dir (or a Hugging Face id in the local cache, or a reranker's
        bundle): torch or onnx on the CPU (fp32), torch on CUDA (fp16 unless `precision` says
        otherwise); anything that is not a one-label `*ForSequenceClassification` of a served
        architecture is refused in one line (`UnsupportedModel`)."""
        from .cross_encoder import read_rerank_spec

        root, name = resolve_model(path)
        if (root / MANIFEST).is_file():
            return cls.from_bundle(root, backend=backend, device=device, threads=threads, packed=packed)
        backend = backend or "torch"
        chosen = check_choice(backend, device, precision)
        check_model_dir(root)
        spec, activation = read_rerank_spec(root, name=name)
        if backend == "onnx":  # ONNX runs from bundles only: built once into the cache, as embedders'
            from .cache import cached_bundle

            shapes = shapes or default_shapes(spec.max_seq_len, device)
            bundle = cached_bundle(
                root, backend="onnx", spec=spec, shapes=shapes, device=device, precision=chosen
            )
            return cls.from_bundle(bundle, device=device, threads=threads)
        tokenizer = TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len)
        engine = make_engine(
            root, spec, activation, int(tokenizer.filler[1]), backend=backend, device=device,
            precision=chosen, shapes=shapes, threads=threads, packed=packed,
        )  # fmt: skip
        return cls(spec=spec, tokenizer=tokenizer, engine=engine)

    @classmethod
    def from_bundle(
        cls, root: str | Path, *, backend: str | None = None, device: str = "cpu", threads: int | None = None,
        packed: bool = True,
    ) -> Reranker:  # fmt: skip
        """A verified reranker bundle (`vecq build` of a cross-encoder) on its own backend."""
        root = Path(root)
        manifest = read_manifest(root)
        verify_files(root, manifest)
        if manifest.task != "rerank":
            raise BundleError(
                f"{root}: an embedding model's bundle, not a reranker's (load it with Embedder)"
            )
        manifest.require_backend(root, backend or manifest.backend)
        check_choice(manifest.backend, device, manifest.precision)
        tokenizer = TextTokenizer.from_dir(root, max_seq_len=manifest.max_seq_len)
        engine = make_engine(
            root, manifest.spec, manifest.activation or "sigmoid", int(tokenizer.filler[1]),
            backend=manifest.backend, device=device, precision=manifest.precision,
            shapes=manifest.shape_set, threads=threads, packed=packed,
            onnx_path=root / "model.onnx" if manifest.backend == "onnx" else None,
        )  # fmt: skip
        return cls(spec=manifest.spec, tokenizer=tokenizer, engine=engine)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return 1

    @property
    def shapes(self) -> ShapeSet:
        return self.engine.shapes

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """(len(documents),) float32: `CrossEncoder.predict([(query, d) for d in documents])`
        with its defaults (the model's activation: sigmoid unless it saved another); each
        pair's score is independent of its batch-mates.  Over-long pairs are truncated."""
        if not isinstance(query, str):
            raise BadInput(f"query: expected str, got {type(query).__name__}")
        check_texts(documents)
        tokens = self.tokenizer.encode_pairs(query, documents)
        out = np.empty((len(documents), 1), dtype=np.float32)
        return run_padded(self.tokenizer, self.engine, tokens, out)[:, 0]

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CUDA_PRECISIONS", "RERANK_BACKENDS", "Reranker", "is_cross_encoder"]
