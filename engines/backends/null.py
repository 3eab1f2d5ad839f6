"""A deterministic engine with no model: vectors are a function of each row's real tokens.

Used by tests (exact, model-free expectations) and by queue-overhead benchmarks (`vecq worker
--backend null`), where any real compute would hide the cost being measured.  For a model dir it
serves the GPU shape grid (it stands in for a GPU worker: few, large shapes, as the planner of a
real GPU worker sees them); for a bundle, the bundle's own shapes.  Its vectors do not depend on
the shape a text is padded to, so either way they are the same.  Given a `token_budget`, it packs
(`vecq.engines.base.packs`) like the padding-free torch engine: the worker then plans token
batches for it, with the same vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..base import Batch, TokenBatch
from ..errors import ShapeError
from ..shapes import ShapeSet

if TYPE_CHECKING:
    from ..bundle import Manifest
    from ..spec import ModelSpec

_MOD = np.int64(2_147_483_647)


class NullEngine:
    """Unit vectors derived from a hash of the row's unpadded token ids."""

    def __init__(self, *, shapes: ShapeSet, dim: int, token_budget: int | None = None) -> None:
        self.shapes = shapes
        self.dim = dim
        if token_budget is not None:  # only then is it a packing engine
            self.token_budget = token_budget
            self.max_rows = max(s.batch for s in shapes)
        self._freqs = np.linspace(1.0, 2.0, dim, dtype=np.float64)
        self.calls = 0

    def warmup(self) -> None:
        return None

    def run(self, batch: Batch | TokenBatch) -> np.ndarray:
        if isinstance(batch, TokenBatch):
            return self._run_tokens(batch)
        if batch.shape not in self.shapes:
            raise ShapeError(f"batch shape {batch.shape} is not one of the engine's shapes (vecq bug)")
        self.calls += 1
        return null_vectors(batch.input_ids, batch.attention_mask, self._freqs)

    def _run_tokens(self, batch: TokenBatch) -> np.ndarray:
        budget = getattr(self, "token_budget", None)
        if budget is None or batch.real_tokens > budget or batch.rows > self.max_rows:
            raise ShapeError(
                f"token batch of {batch.rows} texts / {batch.real_tokens} tokens refused (vecq bug)"
            )
        self.calls += 1
        width = int(batch.lengths.max()) if batch.rows else 1
        ids = np.zeros((batch.rows, width), dtype=np.int64)
        real = np.arange(width) < batch.lengths[:, None]
        ids[real] = batch.ids
        return null_vectors(ids, real.astype(np.int64), self._freqs)

    def close(self) -> None:
        return None


def null_vectors(input_ids: np.ndarray, attention_mask: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """The null engine's vectors, exposed so tests can compute the expected values themselves."""
    ids = input_ids.astype(np.int64) * attention_mask.astype(np.int64)
    weights = (np.arange(1, ids.shape[1] + 1, dtype=np.int64) * 7919) % _MOD
    h = ((ids % _MOD) * weights).sum(axis=1) % _MOD
    v = np.sin(np.outer(h.astype(np.float64) / 1000.0 + 0.5, freqs))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32)


def for_model_dir(
    model_dir: Path, *, spec: ModelSpec, shapes: ShapeSet | None, device: str, **_: Any
) -> NullEngine:
    return NullEngine(shapes=shapes or ShapeSet.grid(max_seq_len=spec.max_seq_len), dim=spec.dim)


def for_bundle(root: Path, manifest: Manifest, *, device: str, **_: Any) -> NullEngine:
    return NullEngine(shapes=manifest.shape_set, dim=manifest.dim)
