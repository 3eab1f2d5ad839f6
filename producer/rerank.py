"""Reranking for producers: a rerank job's checks and its ranked results.

A rerank job is an ordinary vecq job (`contract.py`) whose texts are the documents and whose
options carry `query`; a worker serving a cross-encoder returns one float32 score per document,
in document order, shape (n, 1).  `Client.rerank` / `AsyncClient.rerank` (and the gateway's
`POST /v1/rerank`) turn those scores into `RerankResult`s, best first, cut to `top_n`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .contract import texts_fault
from .errors import BadRequest


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One document's place in a ranking: its index in the request's documents, its score."""

    index: int
    score: float


def check_rerank(documents: Any, top_n: Any) -> None:
    """Refuse a rerank request's documents or `top_n` in one line naming the field (the
    query and the rest are the contract's to check)."""
    fault = texts_fault(documents)
    if fault is not None:
        if fault.startswith("texts: empty"):
            raise BadRequest("documents: empty list (send at least one document)")
        raise BadRequest("documents" + fault.removeprefix("texts"))
    if top_n is not None and (type(top_n) is not int or top_n < 1):
        raise BadRequest(f"top_n: expected an int >= 1 or None, got {top_n!r}")


def ranked(scores: np.ndarray, top_n: int | None = None) -> list[RerankResult]:
    """The documents by score, highest first (ties: the earlier document first), at most `top_n`."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-flat, kind="stable")[:top_n]
    return [RerankResult(int(i), float(flat[i])) for i in order]
