"""A BERT-family encoder over a packed token buffer: texts end to end, no padding computed.

Every layer of BERT except attention works token by token, so a batch's texts can be laid end to
end in one buffer of T tokens with their cumulative lengths (`cu`) beside it; attention keeps
each token to its own text (`kernels.packed_attention`).  The buffer's size, not the batch's
shape, is what the GPU sees, so one CUDA graph per buffer size serves every mix of lengths
(`backends/torch_packed.py`): the fixed-shape rule kept, and no pad token computed.

Built from the transformers model's own weights (no copy of the architecture's code beyond the
forward below); `supports` says which configs it reproduces exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import ATTENTION_CONFIG, add_layer_norm, packed_attention, packed_embed, packed_pool

#: model_type → offset of the first position id (RoBERTa counts from padding_idx + 1).
ARCHITECTURES = {"bert": 0, "roberta": None, "xlm-roberta": None, "distilbert": 0}


def _activation(config: Any) -> str | None:
    """The FFN activation's name (DistilBERT's config calls it `activation`)."""
    return getattr(config, "hidden_act", None) or getattr(config, "activation", None)


def supports(config: Any) -> str | None:
    """None if the packed encoder (`packed_module`) reproduces this config, else why not (one line)."""
    kind = getattr(config, "model_type", "?")
    if kind == "modernbert":
        from .packed_modernbert import supports_modernbert

        return supports_modernbert(config) or _head_size(config)
    if kind not in ARCHITECTURES:
        return f"model_type {kind!r} (packed: {', '.join([*ARCHITECTURES, 'modernbert'])})"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type!r}"
    if _activation(config) not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        return f"hidden_act {_activation(config)!r}"
    return _head_size(config)


def _head_size(config: Any) -> str | None:
    head_dim = config.hidden_size // config.num_attention_heads
    if head_dim & (head_dim - 1) or head_dim < 16:
        return f"head size {head_dim} (packed attention needs a power of two >= 16)"
    return None


def packed_module(encoder: nn.Module, *, pooling: str, normalize: bool) -> nn.Module:
    """The packed twin of a transformers encoder `supports` accepts: `PackedEncoder`, or for
    ModernBERT `PackedModernBert` (same inputs and outputs)."""
    if encoder.config.model_type == "modernbert":
        from .packed_modernbert import PackedModernBert

        return PackedModernBert(encoder, pooling=pooling, normalize=normalize)
    return PackedEncoder(encoder, pooling=pooling, normalize=normalize)


class PackedEncoder(nn.Module):
    """`(ids[T], cu[S+1], n_real[1]) -> (S, dim)` float32 sentence vectors, pooled and normalized.

    Sequence i is tokens cu[i]..cu[i+1]; slots past the batch's texts are empty (cu stays at
    n_real), tokens past n_real are filler.  All three are device tensors of fixed size, so the
    forward can be captured once per T.
    """

    def __init__(
        self, encoder: nn.Module, *, pooling: str, normalize: bool, sep_id: int | None = None
    ) -> None:
        super().__init__()
        config = encoder.config
        why = supports(config)
        if why is None and config.model_type not in ARCHITECTURES:
            why = f"{config.model_type} (`packed_module` gives it its own forward)"
        if why is not None:
            raise ValueError(f"the packed encoder does not serve {why}")
        e = encoder.embeddings
        offset = ARCHITECTURES[config.model_type]
        self.first_position = (config.pad_token_id + 1) if offset is None else offset
        self.max_position = config.max_position_embeddings - 1
        #: the attention kernel's tile, read at capture (`torch_packed.attention_tile` sets it)
        self.attention_config = ATTENTION_CONFIG
        self.word = e.word_embeddings.weight
        self.position = e.position_embeddings.weight
        types = getattr(e, "token_type_embeddings", None)
        self.type0 = None if types is None else types.weight[0]
        #: A cross-encoder's pairs: tokens after each text's first `sep_id` are segment 1 (what
        #: the tokenizer's pair encoding gives BERT); None: every token is segment 0.
        self.types = (
            types.weight if types is not None and sep_id is not None and len(types.weight) > 1 else None
        )
        self.sep_id = sep_id
        self.embed_norm = (e.LayerNorm.weight, e.LayerNorm.bias, e.LayerNorm.eps)
        self.heads = config.num_attention_heads
        self.hidden = config.hidden_size
        self.gelu = "none" if _activation(config) == "gelu" else "tanh"
        #: On CUDA, bias + GELU run in the FFN GEMM's cuBLASLt epilogue (tanh form): the separate
        #: GELU pass over the (T, 4H) activations cost 12 % of a buffer (BENCHMARKS.md, issue 14).
        #: The build's parity check bounds what the tanh form changes.
        self.gelu_epilogue = self.word.is_cuda
        if config.model_type == "distilbert":  # the same layer under other names, no token types
            self.layers = [_distilbert_layer_weights(layer) for layer in encoder.transformer.layer]
        else:
            self.layers = [_layer_weights(layer) for layer in encoder.encoder.layer]
        self.pooling, self.normalize = pooling, normalize
        self._encoder = encoder  # keeps the weights alive (and on the device they were moved to)

    def forward(self, ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        typed = None if self.types is None else (self.types, _segments(ids, cu, n_real, self.sep_id))
        x, seq = packed_embed(
            ids, cu, n_real, word=self.word, position=self.position, type0=self.type0, norm=self.embed_norm,
            first_position=self.first_position, max_position=self.max_position - self.first_position,
            typed=typed,
        )  # fmt: skip
        T = ids.shape[0]
        for layer in self.layers:
            qkv = F.linear(x, layer["wqkv"], layer["bqkv"]).view(T, 3, self.heads, -1)
            att = packed_attention(qkv, seq, cu, n_real, heads=self.heads, config=self.attention_config)
            x = add_layer_norm(x, F.linear(att, layer["wo"], layer["bo"]), *layer["norm1"])
            if self.gelu_epilogue:
                h = torch._addmm_activation(layer["b1"], x, layer["w1"].t(), use_gelu=True)
            else:
                h = F.gelu(F.linear(x, layer["w1"], layer["b1"]), approximate=self.gelu)
            x = add_layer_norm(x, F.linear(h, layer["w2"], layer["b2"]), *layer["norm2"])
        return packed_pool(x, seq, cu, mean=self.pooling != "cls", normalize=self.normalize)


def _segments(ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor, sep_id: int | None) -> torch.Tensor:
    """Each token's segment (int32, T): 1 after the first `sep_id` of its own text, else 0 (as
    `cross_encoder.ScoringEncoder` derives BERT's token types from a padded row)."""
    T, slots = ids.shape[0], cu.shape[0] - 1
    token = torch.arange(T, device=ids.device, dtype=torch.int32)
    live = token < n_real
    seq = (torch.searchsorted(cu, token, right=True) - 1).clamp(0, slots - 1)
    sep = ((ids == sep_id) & live).to(torch.int32)
    before = torch.cumsum(sep, 0, dtype=torch.int32) - sep  # separators before each token
    start = cu[seq].long().clamp(max=T - 1)
    return (((before - before[start]) > 0) & live).to(torch.int32)


def _layer_weights(layer: nn.Module) -> dict[str, Any]:
    """One layer's weights, Q, K and V stacked into one GEMM."""
    a = layer.attention
    return {
        "wqkv": torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]),
        "bqkv": torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias]),
        "wo": a.output.dense.weight,
        "bo": a.output.dense.bias,
        "norm1": (a.output.LayerNorm.weight, a.output.LayerNorm.bias, a.output.LayerNorm.eps),
        "w1": layer.intermediate.dense.weight,
        "b1": layer.intermediate.dense.bias,
        "w2": layer.output.dense.weight,
        "b2": layer.output.dense.bias,
        "norm2": (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias, layer.output.LayerNorm.eps),
    }


def _distilbert_layer_weights(layer: nn.Module) -> dict[str, Any]:
    """One DistilBERT layer's weights under `_layer_weights`' names (BERT's layer, renamed)."""
    a, ffn = layer.attention, layer.ffn
    return {
        "wqkv": torch.cat([a.q_lin.weight, a.k_lin.weight, a.v_lin.weight]),
        "bqkv": torch.cat([a.q_lin.bias, a.k_lin.bias, a.v_lin.bias]),
        "wo": a.out_lin.weight,
        "bo": a.out_lin.bias,
        "norm1": (layer.sa_layer_norm.weight, layer.sa_layer_norm.bias, layer.sa_layer_norm.eps),
        "w1": ffn.lin1.weight,
        "b1": ffn.lin1.bias,
        "w2": ffn.lin2.weight,
        "b2": ffn.lin2.bias,
        "norm2": (layer.output_layer_norm.weight, layer.output_layer_norm.bias, layer.output_layer_norm.eps),
    }
