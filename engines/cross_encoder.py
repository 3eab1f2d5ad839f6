"""Cross-encoders (`*ForSequenceClassification`, one label) as a scoring module: pairs in, scores out.

vecq serves a reranker through the same tokenizer, shapes, batching and backends as an embedder;
what differs lives here.  `ScoringEncoder` takes the two inputs every vecq engine feeds
(`input_ids`, `attention_mask`) and returns one score per row, with the activation that
`sentence_transformers.CrossEncoder.predict` applies by default already inside, so that the torch
engine runs it as is and the ONNX export carries it.  BERT's segment ids are derived in the module
from the first `[SEP]` of each row (what the tokenizer's pair encoding gives, unless a query holds
a literal `[SEP]` token), so no engine needs a third input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import architecture
from .errors import UnsupportedModel
from .pooled import AttnImplementation, from_pretrained
from .spec import ModelSpec, load_json, read_spec

#: The model types vecq reranks with (their `*ForSequenceClassification` heads).
RERANK_TYPES = ("bert", "xlm-roberta", "roberta")
#: `CrossEncoder` activations by their saved dotted path, as `predict` applies them by default.
ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
}


class ScoringEncoder(nn.Module):
    """A sequence-classification model with one label, its activation, and BERT's segment ids."""

    def __init__(self, encoder: nn.Module, *, activation: str, sep_id: int | None) -> None:
        super().__init__()
        self.encoder = encoder  # `export.export_onnx` reads `encoder.config`
        self.activation = activation
        self.sep_id = sep_id  # None: the model has one segment type (RoBERTa, XLM-R)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra: dict[str, torch.Tensor] = {}
        if self.sep_id is not None:
            sep = (input_ids == self.sep_id).long()
            extra["token_type_ids"] = ((sep.cumsum(dim=1) - sep) > 0).long() * attention_mask
        logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits


class PackedScorer(nn.Module):
    """A `ScoringEncoder` over a packed token buffer (`packed_encoder.py`): `(ids, cu, n_real) ->
    (slots, 1)` float32 scores, so that the padding-free engine (`PackedGraphEngine`) serves
    rerankers on CUDA as it serves embedders.  The encoder runs packed up to each text's first
    token; the classifier head and activation run on those (slots, H) rows."""

    def __init__(self, scoring: ScoringEncoder) -> None:
        from .packed_encoder import PackedEncoder

        super().__init__()
        model = scoring.encoder
        self.base = model.bert if model.config.model_type == "bert" else model.roberta
        self.packed = PackedEncoder(self.base, pooling="cls", normalize=False, sep_id=scoring.sep_id)
        self.classifier, self.activation = model.classifier, scoring.activation

    def forward(self, ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        first = self.packed(ids, cu, n_real).to(self.classifier_dtype)[:, None]  # (slots, 1, H)
        if getattr(self.base, "pooler", None) is not None:  # BERT: dense + tanh, then a Linear
            logits = self.classifier(self.base.pooler(first))
        else:  # RoBERTa's head reads features[:, 0] itself
            logits = self.classifier(first)
        return (torch.sigmoid(logits) if self.activation == "sigmoid" else logits).float()

    @property
    def classifier_dtype(self) -> torch.dtype:
        return next(self.classifier.parameters()).dtype


def read_rerank_spec(model_dir: str | Path, *, name: str | None = None) -> tuple[ModelSpec, str]:
    """(spec with dim 1, activation) of a cross-encoder dir, or `UnsupportedModel` in one line.

    The max length is the one `CrossEncoder` truncates pairs to: the tokenizer's
    `model_max_length` (or `max_seq_length`), within the model's positions (`read_spec`'s rule).
    """
    root = Path(model_dir)
    config = load_json(root / "config.json")
    architecture(config, where=root)
    kinds = config.get("architectures") or []
    if config.get("model_type") not in RERANK_TYPES or not any(
        str(k).endswith("ForSequenceClassification") for k in kinds
    ):
        raise UnsupportedModel(
            f"{root}: not a cross-encoder vecq reranks with (expected a *ForSequenceClassification "
            f"of {', '.join(RERANK_TYPES)}, got {kinds or config.get('model_type')!r})"
        )
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    if labels != 1:
        raise UnsupportedModel(f"{root}: a classifier of {labels} labels (vecq reranks with num_labels=1)")
    spec = read_spec(root, name=name, pooling="cls", normalize=False)
    return spec.model_copy(update={"dim": 1}), _activation(root, config)


def _activation(root: Path, config: dict[str, Any]) -> str:
    """The activation `CrossEncoder.predict` applies by default: the saved one, else sigmoid."""
    saved = (
        load_json(root / "config_sentence_transformers.json", required=False).get("activation_fn")
        or (config.get("sentence_transformers") or {}).get("activation_fn")
        or config.get("sbert_ce_default_activation_function")
        or "torch.nn.modules.activation.Sigmoid"
    )
    if saved not in ACTIVATIONS:
        raise UnsupportedModel(f"{root}: activation {saved!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[saved]


def load_scoring(
    model_dir: str | Path, *, activation: str, sep_id: int, attn_implementation: AttnImplementation = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> ScoringEncoder:  # fmt: skip
    """The dir's classifier wrapped as a `ScoringEncoder`, in eval mode, on the CPU (export
    wants eager attention, as for `pooled.load_pooled`)."""
    from transformers import AutoModelForSequenceClassification

    model = from_pretrained(
        AutoModelForSequenceClassification, model_dir, attn_implementation=attn_implementation, dtype=dtype
    )
    types = int(getattr(model.config, "type_vocab_size", 1) or 1)
    return ScoringEncoder(model, activation=activation, sep_id=sep_id if types > 1 else None).eval()
