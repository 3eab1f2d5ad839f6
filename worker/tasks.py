"""The rq job function behind `vecq.producer.contract.JOB_FUNCTION`.

vecq's BatchWorker never calls it (it batches across jobs instead), but a stock `rq worker` with
vecq installed can run vecq jobs through it — slowly, one job at a time, correctly.  The model is
loaded once per process: the default model, or the bundle / model dir and backend named by the
worker's settings (`VECQ_BUNDLE`, `VECQ_MODEL`, `VECQ_BACKEND`).
"""

from __future__ import annotations

import threading

import numpy as np

from vecq.engines import Embedder
from vecq.engines.reranker import Reranker
from vecq.producer.contract import RESULT_DTYPES, build_request

from .settings import WorkerSettings

_lock = threading.Lock()
_loaded: dict[str, Embedder | Reranker] = {}


def embed(texts: list[str], **options: object) -> np.ndarray:
    """Vectors for one job's texts (a rerank job's: (n, 1) scores), validated against the wire
    contract first."""
    request = build_request(texts, **options)
    embedder = _embedder_for(request.model)
    if isinstance(embedder, Reranker) != (request.query is not None):
        raise LookupError(f"model {request.model!r}: a rerank job needs a reranker, an embed job an embedder")
    if isinstance(embedder, Reranker):
        return embedder.score(request.query, request.texts)[:, None]  # type: ignore[arg-type]
    vectors = embedder.embed(
        request.texts, truncate=request.truncate, prompt_name=request.prompt_name,
        prompt=request.prompt, dimensions=request.dimensions,
    )  # fmt: skip
    return vectors.astype(RESULT_DTYPES[request.result_dtype], copy=False)  # rq's own encoding, always


def _embedder_for(model: str) -> Embedder | Reranker:
    with _lock:
        if model not in _loaded:
            embedder = WorkerSettings().load_embedder()
            if embedder.name != model:
                raise LookupError(f"unknown model {model!r}: this worker serves {embedder.name!r}")
            _loaded[model] = embedder
        return _loaded[model]
