"""ModernBERT over a packed token buffer: `PackedEncoder`'s contract for the architecture that
is not BERT's.

ModernBERT (transformers' `ModernBertModel`) has no position table and no token types: it
rotates queries and keys by each token's position (RoPE, a base per layer type), its layers
normalize before attention and before the MLP (pre-norm, no bias by default), its MLP is a
gated GELU, and all but every `global_attn_every_n_layers`-th layer attend only to keys within
`local_attention / 2` tokens.  In a packed buffer a token's position is its offset from its
text's start and two tokens of one text are as far apart as in the text, so the packed
attention kernel serves the local layers with its `window` and the rest carries over:
one CUDA graph per buffer size, no pad token computed (`backends/torch_packed.py`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import (
    ATTENTION_CONFIG,
    add_layer_norm,
    add_norm,
    packed_attention,
    packed_embed,
    packed_pool,
    rotate_qk,
)

GELUS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def supports_modernbert(config: Any) -> str | None:
    """None if `PackedModernBert` reproduces this config, else why not (one line)."""
    if config.hidden_activation not in GELUS:
        return f"hidden_activation {config.hidden_activation!r}"
    for kind in set(config.layer_types):
        rope = (config.rope_parameters or {}).get(kind) or {}
        if rope.get("rope_type", "default") != "default":
            return f"rope_type {rope.get('rope_type')!r} ({kind})"
    return None


class PackedModernBert(nn.Module):
    """`(ids[T], cu[S+1], n_real[1]) -> (S, dim)` float32 sentence vectors, as `PackedEncoder`."""

    def __init__(self, encoder: nn.Module, *, pooling: str, normalize: bool) -> None:
        super().__init__()
        config = encoder.config
        self.word = encoder.embeddings.tok_embeddings.weight
        self.embed_norm = _norm(encoder.embeddings.norm)
        # `packed_embed` adds a position row: one of zeros, so x = LN(word[id]) as ModernBERT's.
        self.no_position = self.word.new_zeros((1, self.word.shape[1]))
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.max_position = config.max_position_embeddings - 1
        #: the attention kernel's tile, read at capture (`torch_packed.attention_tile` sets it)
        self.attention_config = ATTENTION_CONFIG
        self.gelu = GELUS[config.hidden_activation]
        self.rope = {kind: self._rope_table(config, kind) for kind in set(config.layer_types)}
        self.layers = [_layer_weights(layer, config) for layer in encoder.layers]
        self.final_norm = _norm(encoder.final_norm)
        self.pooling, self.normalize = pooling, normalize
        self._encoder = encoder  # keeps the weights alive (and on the device they were moved to)

    def _rope_table(self, config: Any, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of every position, (P, head_dim) in the weights' dtype, as transformers'
        `ModernBertRotaryEmbedding` gives them to `apply_rotary_pos_emb`."""
        base = config.rope_parameters[kind]["rope_theta"]
        dim = self.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        positions = torch.arange(self.max_position + 1, dtype=torch.float)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1).to(self.word.device)
        return emb.cos().to(self.word.dtype), emb.sin().to(self.word.dtype)

    def forward(self, ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        x, seq = packed_embed(
            ids, cu, n_real, word=self.word, position=self.no_position, type0=None, norm=self.embed_norm,
            first_position=0, max_position=0,
        )  # fmt: skip
        T = ids.shape[0]
        h = x  # the first layer has no attention norm
        for i, layer in enumerate(self.layers):
            qkv = F.linear(h, layer["wqkv"], layer["bqkv"]).view(T, 3, self.heads, self.head_dim)
            qkv = rotate_qk(qkv, seq, cu, self.rope[layer["kind"]])
            att = packed_attention(
                qkv, seq, cu, n_real, heads=self.heads, config=self.attention_config, window=layer["window"]
            )
            x, h = add_norm(x, F.linear(att, layer["wo"], layer["bo"]), *layer["mlp_norm"])
            gate_in, gate = F.linear(h, layer["wi"], layer["bi"]).chunk(2, dim=-1)
            y = F.linear(F.gelu(gate_in, approximate=self.gelu) * gate, layer["wo2"], layer["bo2"])
            if i + 1 < len(self.layers):  # the residual, and the next layer's attention norm of it
                x, h = add_norm(x, y, *self.layers[i + 1]["attn_norm"])
        x = add_layer_norm(x, y, *self.final_norm)
        return packed_pool(x, seq, cu, mean=self.pooling != "cls", normalize=self.normalize)


def _norm(norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight, bias, eps) of a LayerNorm; a bias-free one (ModernBERT's default) gets zeros."""
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return norm.weight, bias, norm.eps


def _layer_weights(layer: nn.Module, config: Any) -> dict[str, Any]:
    """One layer's weights, its rotary table's kind and its window (0: global attention)."""
    attn, mlp = layer.attn, layer.mlp
    local = layer.attention_type == "sliding_attention"
    return {
        "kind": layer.attention_type,
        "window": config.local_attention // 2 if local else 0,
        "attn_norm": None if isinstance(layer.attn_norm, nn.Identity) else _norm(layer.attn_norm),
        "wqkv": attn.Wqkv.weight,
        "bqkv": attn.Wqkv.bias,
        "wo": attn.Wo.weight,
        "bo": attn.Wo.bias,
        "mlp_norm": _norm(layer.mlp_norm),
        "wi": mlp.Wi.weight,
        "bi": mlp.Wi.bias,
        "wo2": mlp.Wo.weight,
        "bo2": mlp.Wo.bias,
    }
