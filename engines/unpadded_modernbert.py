"""ModernBERT's padding-free twin for ONNX Runtime: its linear layers over the real tokens only.

ORT's packing mode (RemovePadding → PackedAttention → RestorePadding) needs its BERT attention
fusion, which has no ModernBERT type, and none of ORT's packed attention kernels has a
bidirectional key window.  So this graph, exported from torch like the main one, removes the
padding itself where the FLOPs are: the tokens of a `(batch, sequence)` batch are gathered into
one `(tokens, hidden)` matrix (`NonZero` over the mask) for the embedding norm, the QKV, output
and MLP projections and the norms, and scattered back to `(batch, sequence)` only for attention
(SDPA with the key-padding mask, and the window for the local layers).  Rotary positions are
applied in the gathered layout, each token's from its offset in its text.

It is served like ORT's packed twin: a CUDA bundle of a ModernBERT carries it as its
`PACKED_FILE` (`onnx_build.py`), run without CUDA graphs (its sizes follow the real token count)
for large batches, beside the main graph's per-shape graphs (`backends/onnx_cuda.py`).
It reads the same weights as `PackedModernBert` (`packed_modernbert._layer_weights`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .packed_modernbert import _layer_weights


class UnpaddedModernBert(nn.Module):
    """`(input_ids, attention_mask) -> (batch, dim)`, as `PooledEncoder`, padding-free inside."""

    def __init__(self, encoder: nn.Module, *, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.encoder = encoder  # export_onnx reads its config; keeps the weights registered
        config = encoder.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.hidden = (config.hidden_size,)  # a constant for the tracer, not x.shape[-1:]
        self.gelu = "tanh" if config.hidden_activation in ("gelu_new", "gelu_pytorch_tanh") else "none"
        kinds = sorted(set(config.layer_types))
        self.rotary_emb = _RotaryAngles(
            self.head_dim, [config.rope_parameters[k]["rope_theta"] for k in kinds]
        )
        self.kinds = kinds
        self.layers = [_layer_weights(layer, config) for layer in encoder.layers]
        self.pooling, self.normalize = pooling, normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, S = input_ids.shape
        valid = attention_mask.bool()
        flat = valid.reshape(-1)
        where = torch.nonzero(flat).squeeze(1)  # the real tokens' flat indices
        # each padded slot's row among the gathered tokens, for a Gather back to the padded layout
        # (ORT's ScatterND took 1.2 ms a call at 64 x 512 on the H200).  A pad slot reads token 0:
        # any finite row will do, as attention's bias hides pad keys and pad queries are dropped.
        slots = (torch.cumsum(flat.long(), 0) - 1).clamp(min=0)
        positions = torch.remainder(where, S)  # right-padded: a token's offset in its text
        emb = self.encoder.embeddings
        x = emb.norm(F.embedding(input_ids.reshape(-1)[where], emb.tok_embeddings.weight))
        rope = dict(zip(self.kinds, self.rotary_emb(positions), strict=True))
        biases = self._biases(valid, S)
        for layer in self.layers:
            norm = layer["attn_norm"]
            h = x if norm is None else F.layer_norm(x, self.hidden, *norm)
            qkv = F.linear(h, layer["wqkv"], layer["bqkv"]).view(-1, 3, self.heads, self.head_dim)
            cos, sin = rope[layer["kind"]]
            q, k, v = qkv.unbind(1)
            q, k = (_rotate(t, cos.to(t.dtype), sin.to(t.dtype)) for t in (q, k))
            att = self._attend((q, k, v), where, slots, B, S, biases[layer["window"]])
            x = x + F.linear(att, layer["wo"], layer["bo"])
            h = F.layer_norm(x, self.hidden, *layer["mlp_norm"])
            gate_in, gate = F.linear(h, layer["wi"], layer["bi"]).chunk(2, dim=-1)
            x = x + F.linear(F.gelu(gate_in, approximate=self.gelu) * gate, layer["wo2"], layer["bo2"])
        x = self.encoder.final_norm(x)
        hidden = x[slots].view(B, S, -1)
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:  # sentence-transformers' masked mean
            weights = valid.to(hidden.dtype)
            vectors = (hidden * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(
                min=1e-9
            )
        return F.normalize(vectors, p=2.0, dim=1) if self.normalize else vectors

    def _biases(self, valid: torch.Tensor, S: int) -> dict[int, torch.Tensor]:
        """The additive attention bias of each window (0: global), (batch, 1, S, S): a query sees
        its text's real tokens within the window; a pad query sees all of them.  Finite, so a
        row with no token at all (a batch's padding rows) averages instead of giving NaN."""
        offset = torch.arange(S, device=valid.device)
        near = (offset[:, None] - offset[None, :]).abs()
        keys = valid[:, None, None, :].expand(-1, 1, S, -1)
        seen = {0: keys}
        for w in {layer["window"] for layer in self.layers if layer["window"]}:
            seen[w] = keys & ((near <= w)[None, None] | ~valid[:, None, :, None])
        return {w: (~m).to(torch.float32) * MASKED for w, m in seen.items()}

    def _attend(
        self,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        where: torch.Tensor,
        slots: torch.Tensor,
        B: int,
        S: int,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of the gathered (tokens, heads, head_dim) q, k, v in the padded layout,
        gathered back (one Gather each: no stacking copy, no split after)."""
        q, k, v = (t.reshape(t.shape[0], -1)[slots].view(B, S, -1) for t in qkv)
        return _MultiHeadAttention.apply(q, k, v, bias, self.heads).reshape(B * S, -1)[where]


#: The attention bias of a key a query may not see: finite (a fully masked row stays a number),
#: far below any score, and within fp16's range.
MASKED = -30000.0


class _MultiHeadAttention(torch.autograd.Function):
    """Attention over (batch, S, heads * head_dim) q, k, v with an additive (batch, 1, S, S) bias:
    SDPA in torch, ORT's fused `com.microsoft.MultiHeadAttention` in the ONNX export (cutlass
    memory-efficient attention on CUDA in fp16 where S is a multiple of 8; the scores never
    materialize, where the plain export's MatMul, mask Add and Softmax over (batch, heads, S, S)
    were most of the time at 512 tokens)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, heads):  # type: ignore[no-untyped-def,override]
        B, S, _ = q.shape
        split = [t.reshape(B, S, heads, -1).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*split, attn_mask=bias)
        return out.transpose(1, 2).reshape(B, S, -1)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads):  # type: ignore[no-untyped-def]
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor as absent

        out = g.op(
            "com.microsoft::MultiHeadAttention", q, k, v, absent(g), absent(g), bias, num_heads_i=heads
        )
        out.setType(q.type())
        return out


class _RotaryAngles(nn.Module):
    """(cos, sin) of each gathered token's position, (tokens, 1, head_dim), for each base.

    A module of its own so that its nodes export under `/rotary_emb/`, the scope an fp16 build
    keeps in fp32 (`Architecture.fp32_scopes`): the angles need more than fp16's precision.
    """

    def __init__(self, head_dim: int, bases: list[float]) -> None:
        super().__init__()
        self.head_dim, self.bases = head_dim, bases

    def forward(self, positions: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        dim, out = self.head_dim, []
        for base in self.bases:
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
            out.append((emb.cos(), emb.sin()))
        return tuple(out)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers' `apply_rotary_pos_emb`: t·cos + rotate_half(t)·sin."""
    half = t.shape[-1] // 2
    return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin


def unpadded_twin(module: Any) -> UnpaddedModernBert:
    """The twin of a `PooledEncoder` over a ModernBERT, sharing its weights."""
    return UnpaddedModernBert(module.encoder, pooling=module.pooling, normalize=module.normalize).eval()
