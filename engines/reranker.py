"""`Reranker`: a cross-encoder's tokenizer, shapes and engine behind `score(query, documents)`.

The reranking twin of `Embedder`: pairs are tokenized as `sentence_transformers.CrossEncoder`
tokenizes them (`TextTokenizer.encode_pairs`), planned into the engine's declared shapes and run
through the same padded path as texts (`batching.run_padded`), by the same engines (`TorchEngine`,
`OnnxEngine`) over a `ScoringEncoder` (`cross_encoder.py`) whose output is one score per row.
ONNX models are exported once into the cache (`cache.py`'s dir and key), unfused as CPU bundles
are.  On CUDA the model runs in torch fp16 (or bf16) through the padding-free packed engine
(`PackedScorer` in `PackedGraphEngine`: one graph per token buffer) where the packed encoder
serves its architecture, else through one CUDA graph per padded shape.  Bundles (`vecq build`) of
rerankers and ONNX Runtime on CUDA come later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Engine
from .batching import check_texts, run_padded
from .errors import BadInput, UnknownBackend, VecqEngineError
from .prompts import Prompts
from .shapes import ShapeSet, default_shapes
from .spec import ModelSpec, check_model_dir, resolve_model
from .tokenizer import TextTokenizer

#: The backends a reranker runs on, for now (onnx on the CPU only).
RERANK_BACKENDS = ("torch", "onnx")
#: Precisions on CUDA (torch); the CPU runs fp32.
CUDA_PRECISIONS = ("fp16", "bf16", "fp32")


def is_cross_encoder(path: str | Path) -> bool:
    """Whether a model dir (or a Hugging Face id in the local cache) holds a
    `*ForSequenceClassification`: what a worker serves as a reranker (`Reranker.load` then
    refuses, in one line, one it cannot rerank with)."""
    import json

    try:
        root, _name = resolve_model(path)
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, VecqEngineError):
        return False  # not readable here: the embedder's load says why
    if not isinstance(config, dict):
        return False
    kinds = config.get("architectures") or []
    return any(str(k).endswith("ForSequenceClassification") for k in kinds)


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
        cls, path: str | Path, *, backend: str = "torch", device: str = "cpu", shapes: ShapeSet | None = None,
        threads: int | None = None, precision: str | None = None, packed: bool = True,
    ) -> Reranker:  # fmt: skip
        """A cross-encoder model dir (or a Hugging Face id in the local cache): torch or onnx on
        the CPU (fp32), torch on CUDA (fp16 unless `precision` says otherwise); anything that is
        not a one-label `*ForSequenceClassification` of a served architecture is refused in one
        line (`UnsupportedModel`)."""
        from .cross_encoder import read_rerank_spec

        if backend not in RERANK_BACKENDS:
            raise UnknownBackend(f"backend {backend!r}: a reranker runs on {', '.join(RERANK_BACKENDS)}")
        cuda = device.startswith("cuda")
        if cuda and backend != "torch":
            raise UnknownBackend(f"backend {backend!r} on {device}: a reranker runs on CUDA with torch")
        if device != "cpu" and not cuda:
            raise UnknownBackend(f"device {device!r}: a reranker runs on cpu or cuda")
        chosen = precision or ("fp16" if cuda else "fp32")
        allowed = CUDA_PRECISIONS if cuda else ("fp32",)
        if chosen not in allowed:
            raise UnknownBackend(
                f"precision {chosen!r} on {device}: a reranker runs {'/'.join(allowed)} there"
            )
        root, name = resolve_model(path)
        check_model_dir(root)
        spec, activation = read_rerank_spec(root, name=name)
        tokenizer = TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len)
        sep_id = int(tokenizer.filler[1])
        if cuda:
            engine = _cuda_engine(root, spec, activation, sep_id, device, chosen, shapes, packed=packed)
        elif backend == "onnx":
            from .backends.onnx import OnnxEngine

            shapes = shapes or default_shapes(spec.max_seq_len, device)
            onnx_path = _exported(root, spec, shapes, activation, sep_id)
            engine = OnnxEngine(onnx_path, shapes=shapes, dim=1, device=device, threads=threads)
        else:
            from .backends.torch import TorchEngine, _set_threads
            from .cross_encoder import load_scoring

            _set_threads(device, threads)
            module = load_scoring(root, activation=activation, sep_id=sep_id)
            engine = TorchEngine(
                module, shapes=shapes or default_shapes(spec.max_seq_len, device), dim=1, device=device
            )
        return cls(spec=spec, tokenizer=tokenizer, engine=engine)

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


def _cuda_engine(
    root: Path, spec: ModelSpec, activation: str, sep_id: int, device: str, precision: str,
    shapes: ShapeSet | None, *, packed: bool,
) -> Engine:  # fmt: skip
    """The packed engine where the packed encoder serves the architecture (`PackedScorer`), else
    one CUDA graph per padded shape; both are captured at `warmup`."""
    import torch

    from .cross_encoder import PackedScorer, load_scoring
    from .packed_encoder import supports

    if not torch.cuda.is_available():
        raise UnknownBackend(f"device {device!r}: this torch has no CUDA")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    module = load_scoring(root, activation=activation, sep_id=sep_id, dtype=dtype).to(device)
    if packed and supports(module.encoder.config) is None:
        from .backends.torch_packed import PackedGraphEngine, packed_shapes

        chosen = shapes or packed_shapes(spec.max_seq_len)
        return PackedGraphEngine(PackedScorer(module), shapes=chosen, dim=1, device=device)
    from .backends.torch_graphs import TorchGraphEngine

    return TorchGraphEngine(
        module, shapes=shapes or default_shapes(spec.max_seq_len, device), dim=1, device=device
    )


def _exported(root: Path, spec: ModelSpec, shapes: ShapeSet, activation: str, sep_id: int) -> Path:
    """The model's `ScoringEncoder` as ONNX (fp32, unfused), exported once into the cache."""
    import os
    import tempfile

    from .cache import cache_dir, cache_key
    from .cross_encoder import load_scoring
    from .export import export_onnx

    key = cache_key(root, spec=spec, shapes=shapes, device="cpu", precision=f"rerank-{activation}")
    target = cache_dir() / f"rerank-{key}" / "model.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    module = load_scoring(root, activation=activation, sep_id=sep_id, attn_implementation="eager")
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        made = export_onnx(module, Path(work) / "model.onnx")
        os.replace(made, target)  # whole or absent: another process may be exporting too
    return target
