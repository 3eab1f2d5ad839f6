"""The kernels the packed encoders need beyond torch's own, in Triton, with torch fallbacks.

Profiled on the H200 (BENCHMARKS.md, issue 14), a padding-free BERT-base buffer spent 21 % of
its time in torch's variable-length flash attention: that kernel gives every sequence its own
128-row blocks, so a 47-token text leaves most of each block idle, and it costs the same with a
64- or a 512-token max.  `packed_attention` instead cuts the packed buffer itself into blocks of
`BLOCK_M` consecutive tokens, whatever sequences they belong to; each block reads the keys of
the sequences it touches and masks attention to a token's own sequence.  Short texts share a
block, long ones span several, nothing is padded (ModernBERT's local layers add a key `window`).
`add_layer_norm` is BERT's `LN(x + y)` in one pass (the residual add and the LayerNorm were
another 18 %); `add_norm` keeps the sum too, for pre-norm layers.  `packed_embed` and
`packed_pool` replace a dozen small torch kernels each, and `rotate_qk` ModernBERT's rotary
positions (ten over fp32 copies; with `add_norm`, half a ModernBERT buffer's time at 512 tokens,
BENCHMARKS.md issue 16).

Triton is imported only on CUDA; on CPU (and in CI) the same functions run their torch
reference, which is also what the GPU tests compare the kernels with.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

try:  # present with every CUDA build of torch; absent from the CPU wheel
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

#: Packed buffers are multiples of this many tokens, so that any attention block size up to it
#: tiles them exactly.
BUFFER_MULTIPLE = 128


def triton_ready(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on `x`'s device."""
    return triton is not None and x.is_cuda


if triton is not None:

    @triton.jit
    def _attention_kernel(
        qkv, out, seq_of, cu, n_real, stride_t, stride_o, scale,
        HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        WINDOW: tl.constexpr,
    ):  # fmt: skip
        # qkv: (T, 3, HEADS, HEAD_DIM) rows of stride_t; out: (T, HEADS, HEAD_DIM) of stride_o.
        # WINDOW > 0: a token sees only keys at most WINDOW tokens away (ModernBERT's local layers).
        start = tl.program_id(0) * BLOCK_M
        head = tl.program_id(1)
        n = tl.load(n_real)
        rows = start + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        out_ptrs = out + rows[:, None] * stride_o + head * HEAD_DIM + dims[None, :]
        if start >= n:  # filler tokens past the real ones: their outputs are never read
            tl.store(out_ptrs, tl.zeros((BLOCK_M, HEAD_DIM), dtype=out.dtype.element_ty))
            return
        live = rows < n
        seq = tl.load(seq_of + rows, mask=live, other=-1)
        first = tl.load(seq_of + start)
        last = tl.load(seq_of + tl.minimum(start + BLOCK_M, n) - 1)
        k_start = tl.load(cu + first)
        k_end = tl.load(cu + last + 1)
        if WINDOW > 0:
            k_start = tl.maximum(k_start, start - WINDOW)
            k_end = tl.minimum(k_end, start + BLOCK_M + WINDOW)
        q = tl.load(
            qkv + rows[:, None] * stride_t + head * HEAD_DIM + dims[None, :], mask=live[:, None], other=0.0
        )
        m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_N):
            cols = k0 + tl.arange(0, BLOCK_N)
            inside = cols < k_end
            base = qkv + cols[:, None] * stride_t + head * HEAD_DIM + dims[None, :]
            k = tl.load(base + HEADS * HEAD_DIM, mask=inside[:, None], other=0.0)
            v = tl.load(base + 2 * HEADS * HEAD_DIM, mask=inside[:, None], other=0.0)
            k_seq = tl.load(seq_of + cols, mask=inside, other=-2)
            s = tl.dot(q, tl.trans(k)) * scale  # scale carries log2(e): exp2 below
            keep = seq[:, None] == k_seq[None, :]
            if WINDOW > 0:
                keep = keep & (tl.abs(rows[:, None] - cols[None, :]) <= WINDOW)
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        acc = acc / tl.maximum(l_i, 1e-30)[:, None]  # rows past n saw no key: zeros
        tl.store(out_ptrs, acc.to(out.dtype.element_ty))

    @triton.jit
    def _layer_norm_store(v, inside, cols, width, eps, w, b, out_row):
        # LayerNorm of one row's fp32 values `v` (fp32 statistics), stored at `out_row`.
        mean = tl.sum(v, 0) / width
        centred = tl.where(inside, v - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / width + eps)
        gain = tl.load(w + cols, mask=inside).to(tl.float32)
        shift = tl.load(b + cols, mask=inside).to(tl.float32)
        normed = centred * rstd * gain + shift
        tl.store(out_row + cols, normed.to(out_row.dtype.element_ty), mask=inside)

    @triton.jit
    def _add_layer_norm_kernel(
        x, y, w, b, out, total, stride, width, eps, BLOCK: tl.constexpr, KEEP_SUM: tl.constexpr
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        v = tl.load(x + row * stride + cols, mask=inside, other=0.0).to(tl.float32)
        v += tl.load(y + row * stride + cols, mask=inside, other=0.0).to(tl.float32)
        if KEEP_SUM:  # a pre-norm layer keeps x + y as its residual stream
            tl.store(total + row * stride + cols, v.to(total.dtype.element_ty), mask=inside)
        _layer_norm_store(v, inside, cols, width, eps, w, b, out + row * stride)

    @triton.jit
    def _rotary_kernel(qkv, cos, sin, cu, seq_of, stride_t, max_pos, HEADS: tl.constexpr, HALF: tl.constexpr):
        # One token: its position from its sequence's start, then every head's query and key
        # rotated in place (x1, x2 halves: x1·c − x2·s, x2·c + x1·s, in fp32).
        t = tl.program_id(0)
        pos = tl.minimum(tl.maximum(t - tl.load(cu + tl.load(seq_of + t)), 0), max_pos)
        d = tl.arange(0, HALF)
        c = tl.load(cos + pos * (2 * HALF) + d).to(tl.float32)
        s = tl.load(sin + pos * (2 * HALF) + d).to(tl.float32)
        for j in tl.static_range(2 * HEADS):  # the queries' heads, then the keys'
            base = qkv + t * stride_t + j * (2 * HALF)
            x1 = tl.load(base + d).to(tl.float32)
            x2 = tl.load(base + HALF + d).to(tl.float32)
            tl.store(base + d, (x1 * c - x2 * s).to(qkv.dtype.element_ty))
            tl.store(base + HALF + d, (x2 * c + x1 * s).to(qkv.dtype.element_ty))

    @triton.jit
    def _embed_kernel(
        ids, cu, n_real, word, position, type0, type_ids, w, b, out, seq_out, stride, width, slots, first,
        max_pos, eps, HAS_TYPE: tl.constexpr, TYPED: tl.constexpr, STEPS: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # One token: its sequence (binary search of cu), position, the three embeddings, LayerNorm.
        t = tl.program_id(0)
        n = tl.load(n_real)
        lo = t * 0
        hi = lo + slots  # invariant: cu[lo] <= t < cu[hi] for a real token
        for _ in range(STEPS):
            mid = (lo + hi) // 2
            below = tl.load(cu + mid) <= t
            lo = tl.where(below, mid, lo)
            hi = tl.where(below, hi, mid)
        seq = tl.where(t < n, lo, slots)
        tl.store(seq_out + t, seq)
        pos = tl.minimum(tl.maximum(t - tl.load(cu + lo), 0), max_pos) + first
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        token = tl.load(ids + t)
        v = tl.load(word + token * width + cols, mask=inside, other=0.0).to(tl.float32)
        v += tl.load(position + pos * width + cols, mask=inside, other=0.0).to(tl.float32)
        if TYPED:  # type0 is the whole table, each token its own row
            v += tl.load(type0 + tl.load(type_ids + t) * width + cols, mask=inside, other=0.0).to(tl.float32)
        elif HAS_TYPE:
            v += tl.load(type0 + cols, mask=inside, other=0.0).to(tl.float32)
        _layer_norm_store(v, inside, cols, width, eps, w, b, out + t * stride)

    @triton.jit
    def _pool_kernel(
        x, cu, out, stride, width, MEAN: tl.constexpr, NORMALIZE: tl.constexpr, ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        # One sequence: the mean of its tokens (or its first token), L2-normalized, fp32.
        s = tl.program_id(0)
        a = tl.load(cu + s)
        e = tl.load(cu + s + 1)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        if MEAN:
            acc = tl.zeros((ROWS, BLOCK), dtype=tl.float32)
            for r0 in range(a, e, ROWS):
                rows = r0 + tl.arange(0, ROWS)
                ok = (rows < e)[:, None] & inside[None, :]
                acc += tl.load(x + rows[:, None] * stride + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            v = tl.sum(acc, 0) / tl.maximum(e - a, 1).to(tl.float32)
        else:
            present = cols < tl.where(e > a, width, 0)  # an empty slot reads nothing
            v = tl.load(x + a * stride + cols, mask=present, other=0.0).to(tl.float32)
        if NORMALIZE:  # F.normalize: v / max(|v|, 1e-12)
            v = v / tl.maximum(tl.sqrt(tl.sum(v * v, 0)), 1e-12)
        tl.store(out + s * width + cols, v, mask=inside)


#: (BLOCK_M, BLOCK_N, num_warps, num_stages) of the attention kernel: query rows per block (64
#: fills Hopper's smallest tensor-core tile), keys per step.  From the sweep in
#: benchmarks/probes/packed_bert.py (vecq-profile) on the H200.
ATTENTION_CONFIG = (64, 32, 4, 2)  # 129 µs per BERT-base layer of 32k tokens; (64, 64, 4, 2) 138
#: The tile long texts want: from 512-token texts up 17-19 % faster than the one above and as fast
#: as flash attention, on 53-token texts 20 % slower (benchmarks/probes/long_attention.py on the
#: H200, BENCHMARKS.md issue 16).  A buffer's texts decide which tile pays (a whole XLM-R base
#: buffer: 1.14x at 8,192-token texts, 0.93x at 53, probes/long_tile.py), so models that read
#: long texts get a second graph per buffer with this tile (`torch_packed.LONG_TEXTS_FROM`).
LONG_ATTENTION_CONFIG = (128, 64, 4, 3)


def packed_attention(
    qkv: torch.Tensor, seq_of: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor, *, heads: int,
    config: tuple[int, int, int, int] | None = None, window: int = 0,
) -> torch.Tensor:  # fmt: skip
    """Self-attention of every sequence of a packed buffer within itself (and, with `window`,
    only to keys at most that many tokens away: ModernBERT's local layers).

    `qkv` is (T, 3, heads, head_dim); `cu` the cumulative lengths (int32, cu[i]..cu[i+1] is
    sequence i); `seq_of` (int32, T) each token's sequence; `n_real` (int32, 1) the tokens that
    belong to sequences — those past it are filler, whose outputs are zero.  All are device
    tensors, so one CUDA graph serves every batch of the buffer's size.  Returns (T, heads *
    head_dim).
    """
    T, _, _, head_dim = qkv.shape
    if T % BUFFER_MULTIPLE:
        raise ValueError(f"packed buffer of {T} tokens: must be a multiple of {BUFFER_MULTIPLE}")
    if not triton_ready(qkv):
        return _attention_reference(qkv, cu, int(n_real.item()), heads=heads, window=window)
    out = torch.empty((T, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    block_m, block_n, warps, stages = config or ATTENTION_CONFIG
    scale = math.log2(math.e) / math.sqrt(head_dim)
    _attention_kernel[(T // block_m, heads)](
        qkv, out, seq_of, cu, n_real, qkv.stride(0), out.stride(0), scale,
        HEADS=heads, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, WINDOW=window, num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return out.view(T, heads * head_dim)


def _attention_reference(
    qkv: torch.Tensor, cu: torch.Tensor, n: int, *, heads: int, window: int = 0
) -> torch.Tensor:
    """One SDPA per sequence: the meaning `packed_attention` must keep (CPU, and the GPU tests)."""
    T, _, _, head_dim = qkv.shape
    out = qkv.new_zeros((T, heads * head_dim))
    bounds = cu.tolist()
    for a, b in itertools.pairwise(bounds):
        if b > n or b <= a:
            break
        q, k, v = (qkv[a:b, j].transpose(0, 1) for j in range(3))  # (heads, L, head_dim)
        near = None
        if window:
            idx = torch.arange(b - a, device=qkv.device)
            near = (idx[:, None] - idx[None, :]).abs() <= window
        out[a:b] = F.scaled_dot_product_attention(q, k, v, attn_mask=near).transpose(0, 1).reshape(b - a, -1)
    return out


def add_layer_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """`layer_norm(x + y)` over the last dim, in one pass on CUDA (fp32 statistics)."""
    if not triton_ready(x):
        return F.layer_norm(x + y, (x.shape[-1],), weight, bias, eps)
    return _add_norm(x, y, weight, bias, eps, keep_sum=False)[1]


def add_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x + y, layer_norm(x + y))` in one pass on CUDA: a pre-norm layer's (ModernBERT's)
    residual stream and the input of its next sublayer."""
    if not triton_ready(x):
        total = x + y
        return total, F.layer_norm(total, (x.shape[-1],), weight, bias, eps)
    return _add_norm(x, y, weight, bias, eps, keep_sum=True)


def _add_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, *, keep_sum: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if keep_sum else out
    _add_layer_norm_kernel[(rows,)](
        x, y, weight, bias, out, total, x.stride(0), width, eps, BLOCK=triton.next_power_of_2(width),
        KEEP_SUM=keep_sum, num_warps=4,
    )  # fmt: skip
    return total, out


def rotate_qk(
    qkv: torch.Tensor, seq: torch.Tensor, cu: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Rotary positions (RoPE, transformers' `apply_rotary_pos_emb`) applied to the queries and
    keys of a packed `(T, 3, heads, head_dim)` buffer, each token at its offset from its own
    text's start; `table` is (cos, sin), each (positions, head_dim) with equal halves, as RoPE's
    are (the kernel reads the first).  In place, one kernel on CUDA, where torch took ten."""
    cos, sin = table
    T, _, heads, head_dim = qkv.shape
    if not triton_ready(qkv):
        slots = cu.shape[0] - 1
        token = torch.arange(T, device=qkv.device, dtype=torch.int32)
        pos = (token - cu[seq.clamp(max=slots - 1)]).clamp(min=0, max=cos.shape[0] - 1).long()
        c, s = cos[pos][:, None], sin[pos][:, None]
        for j in (0, 1):
            f = qkv[:, j].float()
            half = head_dim // 2
            rotated = torch.cat((-f[..., half:], f[..., :half]), dim=-1)
            qkv[:, j] = (f * c + rotated * s).to(qkv.dtype)
        return qkv
    _rotary_kernel[(T,)](
        qkv, cos, sin, cu, seq, qkv.stride(0), cos.shape[0] - 1, HEADS=heads, HALF=head_dim // 2, num_warps=1
    )
    return qkv


def packed_embed(
    ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor, *, word: torch.Tensor, position: torch.Tensor,
    type0: torch.Tensor | None, norm: tuple[torch.Tensor, torch.Tensor, float], first_position: int,
    max_position: int, typed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """BERT's embeddings of a packed buffer, in one kernel on CUDA: `(x (T, H), seq (T,) int32)`.

    Each token's sequence (filler: `slots`) and position within it come from `cu`; x is
    `layer_norm(word[id] + position[first_position + min(pos, max_position)] + type0)`.  In torch
    this was a dozen kernels (search, gathers, adds, LayerNorm): a fifth of the 106 a one-text
    buffer launched, each ~4 µs (BENCHMARKS.md, issue 14).  `typed` = (the token-type table,
    each token's type (T,)) replaces `type0` where segments differ (a cross-encoder's pairs).
    """
    T, slots = ids.shape[0], cu.shape[0] - 1
    if not triton_ready(ids):
        token = torch.arange(T, device=ids.device, dtype=torch.int32)
        seq = torch.searchsorted(cu, token, right=True) - 1
        seq = torch.where(token < n_real, seq, slots)
        start = cu[seq.clamp(max=slots - 1)]
        positions = (token - start).clamp(min=0, max=max_position)
        x = word[ids] + position[positions + first_position]
        if typed is not None:
            x = x + typed[0][typed[1].long()]
        elif type0 is not None:
            x = x + type0
        return F.layer_norm(x, (word.shape[1],), *norm), seq.to(torch.int32)
    width = word.shape[1]
    out = torch.empty((T, width), dtype=word.dtype, device=ids.device)
    seq = torch.empty(T, dtype=torch.int32, device=ids.device)
    weight, bias, eps = norm
    table, type_ids = typed if typed is not None else (word if type0 is None else type0, seq)
    _embed_kernel[(T,)](
        ids, cu, n_real, word, position, table, type_ids, weight, bias, out, seq,
        out.stride(0), width, slots, first_position, max_position, eps, HAS_TYPE=type0 is not None,
        TYPED=typed is not None, STEPS=max(1, slots.bit_length()), BLOCK=triton.next_power_of_2(width),
        num_warps=4,
    )  # fmt: skip
    return out, seq


def packed_pool(
    x: torch.Tensor, seq: torch.Tensor, cu: torch.Tensor, *, mean: bool, normalize: bool
) -> torch.Tensor:
    """Each sequence's vector, float32 `(slots, H)`: the mean of its tokens as
    sentence-transformers takes it (or its first token), L2-normalized if asked; an empty slot
    gives zeros.  One kernel on CUDA, where torch took ten."""
    slots = cu.shape[0] - 1
    if not triton_ready(x):
        if mean:
            sums = x.new_zeros((slots + 1, x.shape[1]), dtype=torch.float32).index_add_(
                0, seq.long(), x.float()
            )
            vectors = sums[:slots] / (cu[1:] - cu[:-1]).clamp(min=1)[:, None].float()
        else:
            vectors = x[cu[:-1].clamp(max=x.shape[0] - 1).long()].float()
            vectors = torch.where((cu[1:] > cu[:-1])[:, None], vectors, 0.0)
        return F.normalize(vectors, p=2.0, dim=1) if normalize else vectors
    width = x.shape[1]
    out = torch.empty((slots, width), dtype=torch.float32, device=x.device)
    _pool_kernel[(slots,)](
        x, cu, out, x.stride(0), width, MEAN=mean, NORMALIZE=normalize, ROWS=8,
        BLOCK=triton.next_power_of_2(width), num_warps=4,
    )  # fmt: skip
    return out
