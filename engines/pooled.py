"""The encoder plus its pooling head as one torch module: `(input_ids, attention_mask) -> (B, dim)`.

The torch backend runs this module and the ONNX export traces it, so pooling and normalization
are part of the exported graph: every backend returns finished sentence vectors and the worker
never touches hidden states.  Mean pooling follows sentence-transformers exactly (masked sum over
the clamped token count), so vecq's vectors match `SentenceTransformer.encode`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import ModelNotFound
from .spec import ModelSpec

AttnImplementation = Literal["eager", "sdpa"]


class PooledEncoder(nn.Module):
    """A transformers encoder, CLS or mean pooling, and optional L2 normalization."""

    def __init__(self, encoder: nn.Module, *, pooling: str, normalize: bool) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling {pooling!r} is not one of cls, mean")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            vectors = nn.functional.normalize(vectors, p=2.0, dim=1)
        return vectors


def load_pooled(
    model_dir: str | Path,
    spec: ModelSpec,
    *,
    attn_implementation: AttnImplementation = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> PooledEncoder:
    """The model dir's encoder wrapped with `spec`'s head, in eval mode on the CPU.

    Export wants `attn_implementation="eager"`: ONNX Runtime's transformer optimizer recognizes
    (and fuses) the eager attention subgraph, not the SDPA one.  Serving in torch wants "sdpa".
    """
    from transformers import AutoModel

    encoder = from_pretrained(AutoModel, model_dir, attn_implementation=attn_implementation, dtype=dtype)
    return PooledEncoder(encoder, pooling=spec.pooling, normalize=spec.normalize).eval()


def from_pretrained(
    auto_class: Any, model_dir: str | Path, *, attn_implementation: str, dtype: torch.dtype
) -> Any:
    """`auto_class.from_pretrained(model_dir)` without its per-weight progress bar (noise in a
    worker's log), or `ModelNotFound` in one line when transformers cannot load it."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(
            str(model_dir), attn_implementation=attn_implementation, dtype=dtype
        )
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"{model_dir}: transformers cannot load the model ({first_line})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
