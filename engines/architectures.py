"""The encoder architectures vecq serves, by config.json `model_type`, and what differs between them.

One table, read wherever a model is loaded, built or served, so that an architecture vecq does not
serve is refused at once in one line naming it and the supported list, instead of failing deep in
export or with a `KeyError` on a config field (DistilBERT names its width `dim`, not
`hidden_size`).  What each line records is what the rest of vecq would otherwise have to guess:

- `dim_key`: the config field of the hidden size;
- `position_offset`: positions a RoBERTa-style model reserves before the first token's
  (`pad_token_id + 1`: position ids count from there), so its longest input is
  `max_position_embeddings` minus that;
- `ort_model_type`: the model type ONNX Runtime's transformer optimizer fuses for it (ORT's "bert"
  optimizer covers BERT, RoBERTa, XLM-R and DistilBERT), or None where ORT has no fusion
  (ModernBERT's rotary, partly sliding-window attention): such graphs are served unfused, with no
  packed twin from ORT (its packing mode rewrites fused Attention nodes only; ModernBERT's twin is
  vecq's own, `unpadded_modernbert.py`);
- `fp32_scopes`: parts of the graph (node-name scopes) an fp16 build keeps in fp32: ModernBERT's
  rotary angles, since fp16 holds positions exactly only up to 2,048 and position × frequency
  loses the phase long before (cos off by 0.08 at position 500, by 0.8 at 8,000).

int8 needs no line: every architecture here held parity in int8 on tiny random models, and a
build whose int8 graph misses parity is refused by the build's own parity check.

Inputs are the same for all: vecq feeds `input_ids` and `attention_mask` only, and transformers
makes the rest as each model expects -- zero token types where the model has them (BERT,
RoBERTa, XLM-R), none where it has not (DistilBERT, ModernBERT), RoBERTa's position ids from the
non-pad tokens, ModernBERT's rotary positions from 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedModel

#: The longest input vecq serves, whatever a model's positions allow (bge-m3, ModernBERT).
MAX_SEQ_LEN = 8192


@dataclass(frozen=True)
class Architecture:
    """What vecq needs to know about one encoder architecture."""

    model_type: str
    dim_key: str = "hidden_size"
    #: Positions reserved before the first token: "pad+1" (RoBERTa's padding_idx + 1) or 0.
    position_offset: str | int = 0
    ort_model_type: str | None = "bert"
    fp32_scopes: tuple[str, ...] = ()

    def dim(self, config: Mapping[str, Any]) -> int:
        """The model's hidden size (its sentence vectors' dim before any projection)."""
        return int(config[self.dim_key])

    def max_positions(self, config: Mapping[str, Any]) -> int:
        """Tokens the model can read: its position table, less RoBERTa's reserved positions."""
        positions = int(config.get("max_position_embeddings", 512))
        if self.position_offset == "pad+1":
            return positions - (int(config.get("pad_token_id", 1)) + 1)
        return positions - int(self.position_offset)


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("bert"),
        Architecture("distilbert", dim_key="dim"),
        Architecture("roberta", position_offset="pad+1"),
        Architecture("xlm-roberta", position_offset="pad+1"),
        Architecture("modernbert", ort_model_type=None, fp32_scopes=("rotary_emb",)),
    )
}


def supported() -> str:
    """The supported model types, for messages."""
    return ", ".join(ARCHITECTURES)


def architecture(config: Mapping[str, Any], *, where: object = "model") -> Architecture:
    """The architecture of a config.json's contents, or `UnsupportedModel` in one line."""
    kind = config.get("model_type")
    arch = ARCHITECTURES.get(str(kind))
    if arch is None:
        raise UnsupportedModel(
            f"{where}: architecture (model_type) {kind!r} is not served by vecq (supported: {supported()})"
        )
    return arch


def max_seq_len(config: Mapping[str, Any], *, wanted: int | float | None) -> int:
    """`wanted` tokens (None: all the model reads), within the model's positions and `MAX_SEQ_LEN`.

    Callers pass what sentence-transformers would use: `max_seq_length` from
    sentence_bert_config.json, else the tokenizer's `model_max_length` (tokenizer_config.json,
    where transformers writes a huge number for "no limit").
    """
    positions = architecture(config).max_positions(config)
    return max(1, int(min(wanted or positions, positions, MAX_SEQ_LEN)))
