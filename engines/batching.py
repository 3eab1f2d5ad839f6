"""Texts known up front → vectors, through an engine's fixed shapes.

The one path from a list of texts to vectors outside the worker: `Embedder.embed` and every
parity check of `vecq build` run it, so a bundle is checked through exactly the planning and
padding it is served with.  (The worker plans across jobs instead: `vecq.worker.planner`.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .base import Engine, TokenBatch, packs, run_in_turn, token_slices
from .errors import BadInput
from .tokenizer import TextTokenizer, Tokenized


def check_texts(texts: object) -> None:
    """Refuse what cannot be embedded, naming the first bad item; an empty string is fine."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise BadInput(f"texts: expected a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise BadInput("texts: empty list (pass at least one text)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadInput(f"texts[{i}]: expected str, got {type(t).__name__}")


def dimensions_fault(dimensions: object, dim: int) -> str | None:
    """The one line refusing a Matryoshka size `dimensions` for a model of `dim`, or None."""
    if dimensions is None:
        return None
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        return f"dimensions: expected an integer of at least 1, got {dimensions!r}"
    if dimensions > dim:
        return f"dimensions: {dimensions} is over the model's {dim}"
    return None


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of each vector (all for None), contiguous.

    Exactly sentence-transformers' `truncate_dim`: a slice after the model's own modules, with
    no normalization after it -- a model with a Normalize module gives unit vectors cut short
    (norm below 1), as `SentenceTransformer.encode(..., truncate_dim=d)` does; cosine
    similarity is unaffected, a dot product needs `normalize_embeddings` there and here a
    normalization of its own."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return np.ascontiguousarray(vectors[:, :dimensions])


def embed_texts(
    tokenizer: TextTokenizer, engine: Engine, texts: Sequence[str], *, truncate: bool = True
) -> np.ndarray:
    """(len(texts), dim) float32; each text's vector is independent of its batch-mates."""
    check_texts(texts)
    out = np.empty((len(texts), engine.dim), dtype=np.float32)
    if packs(engine):
        placed = 0
        for vectors in run_in_turn(engine, _token_batches(tokenizer, engine, texts, truncate)):
            out[placed : placed + len(vectors)] = vectors
            placed += len(vectors)
        return out
    return run_padded(tokenizer, engine, tokenizer.encode(texts, truncate=truncate), out)


def run_padded(tokenizer: TextTokenizer, engine: Engine, tokens: Tokenized, out: np.ndarray) -> np.ndarray:
    """`out`, row i filled with the engine's output for `tokens`' sequence i, through the
    engine's declared shapes (the padded path: texts for `Embedder`, pairs for `Reranker`)."""
    plan = engine.shapes.plan(tokens.lengths)
    batches = (tokenizer.make_batch([tokens.ids[i] for i in p.indices], p.shape) for p in plan)
    for planned, vectors in zip(plan, run_in_turn(engine, batches), strict=True):
        out[planned.indices] = vectors[: len(planned.indices)]
    return out


#: Texts tokenized at a time for an engine that packs: the next chunk is tokenized while the
#: device runs the batches of this one (`run_in_turn` makes batch k+1 before collecting k).
CHUNK_TEXTS = 4096


def _token_batches(
    tokenizer: TextTokenizer, engine: Engine, texts: Sequence[str], truncate: bool
) -> Iterator[TokenBatch]:
    """Texts end to end, in order, each batch filled to the engine's budget: tokenized a chunk
    at a time (all at once when truncation is off, so that an over-long text is refused before
    anything runs), the unfilled last batch of a chunk carried into the next."""
    budget, max_rows = engine.token_budget, engine.max_rows  # type: ignore[attr-defined]
    step = CHUNK_TEXTS if truncate else len(texts)
    carry: Tokenized | None = None
    for start in range(0, len(texts), step):
        tokens = tokenizer.encode(texts[start : start + step], truncate=truncate)
        if carry is not None:
            tokens = Tokenized.join([carry, tokens])
        batches = token_batches(tokens, budget=budget, max_rows=max_rows)
        if start + step < len(texts):  # the tail waits for the next chunk's texts
            tail = batches.pop()
            carry = Tokenized(tail.ids, tail.lengths)
        yield from batches


def token_batches(tokens: Tokenized, *, budget: int, max_rows: int) -> list[TokenBatch]:
    """`tokens` cut in order into batches of at most `budget` tokens and `max_rows` texts."""
    cuts = token_slices(tokens.lengths, budget=budget, max_rows=max_rows)
    return [TokenBatch(p.flat, p.lengths) for p in (tokens.slice(c.start, c.stop) for c in cuts)]
