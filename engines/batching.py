"""Texts known up front → vectors, through an engine's fixed shapes.

The one path from a list of texts to vectors outside the worker: `Embedder.embed` and every
parity check of `vecq build` run it, so a bundle is checked through exactly the planning and
padding it is served with.  (The worker plans across jobs instead: `vecq.worker.planner`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Engine, TokenBatch, packs, run_in_turn, token_slices
from .errors import BadInput
from .tokenizer import TextTokenizer


def check_texts(texts: object) -> None:
    """Refuse what cannot be embedded, naming the first bad item; an empty string is fine."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise BadInput(f"texts: expected a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise BadInput("texts: empty list (pass at least one text)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadInput(f"texts[{i}]: expected str, got {type(t).__name__}")


def embed_texts(
    tokenizer: TextTokenizer, engine: Engine, texts: Sequence[str], *, truncate: bool = True
) -> np.ndarray:
    """(len(texts), dim) float32; each text's vector is independent of its batch-mates."""
    check_texts(texts)
    tokens = tokenizer.encode(texts, truncate=truncate)
    out = np.empty((len(texts), engine.dim), dtype=np.float32)
    if packs(engine):  # texts end to end, in order, each batch filled to the budget
        cuts = token_slices(tokens.lengths, budget=engine.token_budget, max_rows=engine.max_rows)  # type: ignore[attr-defined]
        runs = (TokenBatch(part.flat, part.lengths) for part in (tokens.slice(c.start, c.stop) for c in cuts))
        for cut, vectors in zip(cuts, run_in_turn(engine, runs), strict=True):
            out[cut] = vectors
        return out
    plan = engine.shapes.plan(tokens.lengths)
    batches = (tokenizer.make_batch([tokens.ids[i] for i in p.indices], p.shape) for p in plan)
    for planned, vectors in zip(plan, run_in_turn(engine, batches), strict=True):
        out[planned.indices] = vectors[: len(planned.indices)]
    return out
