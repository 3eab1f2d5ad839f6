"""Parity: does a built engine reproduce the torch model on a fixed, hostile set of texts?

The reference is the fp32 `PooledEncoder` run one text at a time with no padding at all, so a
bundle's parity covers export, optimization, precision and vecq's own shape padding at once.
The texts (`parity_texts.json`) mix English, Chinese, Japanese, other scripts, emoji, code, URLs,
whitespace-only, single characters and texts far over 512 tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

import numpy as np
from pydantic import BaseModel, ConfigDict

from .errors import ParityError
from .tokenizer import TextTokenizer

# Every parity-text cosine to the fp32 reference must reach this, per precision.
THRESHOLDS: dict[str, float] = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8": 0.99}


class ParityReport(BaseModel):
    """Cosines of an engine's vectors to the reference, summarized for the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_texts: int
    min_cosine: float
    mean_cosine: float
    worst_index: int
    threshold: float
    reference: str = "torch fp32, one text at a time, unpadded"

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def summary(self) -> str:
        return f"parity min cosine {self.min_cosine:.7f} over {self.n_texts} texts"

    def shortfall(self) -> str:
        return (
            f"parity text {self.worst_index} has cosine {self.min_cosine:.6f} to the torch fp32 "
            f"reference, under the required {self.threshold}"
        )


#: A reranker's largest allowed |score - reference| per precision (scores are the model's
#: activation: sigmoid scores lie in 0..1).
SCORE_TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}


class ScoreParity(BaseModel):
    """A reranker bundle's scores against its torch fp32 reference: a cosine means nothing for
    one number per pair, so the largest absolute difference is what is bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_pairs: int
    max_abs_error: float
    worst_index: int
    tolerance: float
    reference: str = "torch fp32, one pair at a time, unpadded"

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def summary(self) -> str:
        return f"parity max score error {self.max_abs_error:.2e} over {self.n_pairs} pairs"

    def shortfall(self) -> str:
        return (
            f"parity pair {self.worst_index} scores {self.max_abs_error:.2e} from the torch fp32 "
            f"reference, over the allowed {self.tolerance}"
        )


def compare_scores(scores: np.ndarray, reference: np.ndarray, *, precision: str) -> ScoreParity:
    """The parity of a reranker's (n,) scores against the (n,) reference, with `precision`'s tolerance."""
    error = np.abs(scores.astype(np.float64) - reference.astype(np.float64))
    worst = int(np.argmax(error))
    return ScoreParity(
        n_pairs=len(error), max_abs_error=float(error[worst]), worst_index=worst,
        tolerance=SCORE_TOLERANCES[precision],
    )  # fmt: skip


def parity_texts() -> list[str]:
    """The fixed parity texts shipped with vecq."""
    raw = resources.files("vecq.engines").joinpath("parity_texts.json").read_text(encoding="utf-8")
    return list(json.loads(raw)["texts"])


def calibration_texts() -> list[str]:
    """Texts of the same kinds, kept apart from the parity texts, for choices made while building
    (which int8 nodes stay fp32), so that parity is checked on texts those choices never saw."""
    raw = resources.files("vecq.engines").joinpath("parity_texts.json").read_text(encoding="utf-8")
    return list(json.loads(raw)["calibration"])


def reference_vectors(module, tokenizer: TextTokenizer, texts: Sequence[str]) -> np.ndarray:
    """The torch module's vector of each text alone (batch 1, no padding), float32."""
    import torch

    tokens = tokenizer.encode(texts, truncate=True)
    out = []
    with torch.inference_mode():
        for ids in tokens.ids:
            t = torch.from_numpy(ids)[None]
            out.append(module(t, torch.ones_like(t)).float().numpy())
    return np.concatenate(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays (zero vectors count as 0)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.where(norms == 0, 1.0, norms)


def compare(vectors: np.ndarray, reference: np.ndarray, *, precision: str) -> ParityReport:
    """The parity report of `vectors` against `reference`, with `precision`'s threshold."""
    cos = cosines(vectors, reference)
    worst = int(np.argmin(cos))
    return ParityReport(
        n_texts=len(cos),
        min_cosine=float(cos[worst]),
        mean_cosine=float(cos.mean()),
        worst_index=worst,
        threshold=THRESHOLDS[precision],
    )


def require(report: ParityReport | ScoreParity, *, what: str) -> None:
    """Refuse an engine whose worst parity text (or pair) is past its bound, in one line."""
    if not report.passed:
        raise ParityError(f"{what}: {report.shortfall()} (refusing to write the bundle)")
