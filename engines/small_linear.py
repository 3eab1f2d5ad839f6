"""A linear layer over a packed buffer's real rows only, in Triton, for small token buffers.

In a 128-token buffer holding one query, cuBLAS computes all 128 rows of each of a layer's four
GEMMs, and its kernels' own time, not the weights they read, sets the buffer's (~0.36 ms for
BERT-base on the H200, the floor under a lone query's latency and the write-up's workload,
BENCHMARKS.md issue 14).  `small_linear` computes the row blocks below `n_real` only, with the
columns spread over every SM; `torch_packed.SMALL_LINEARS_UP_TO` says which buffers use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels import triton, triton_ready

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _small_linear_kernel(
        x, w, b, out, n_real, N, K, stride_x, stride_w, stride_o,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr,
    ):  # fmt: skip
        # out[rows, cols] = x[rows] @ w[cols].T + b, then GELU (1: tanh form, 2: erf), for the row
        # blocks holding real tokens only: those past n_real are filler nothing reads.
        row0 = tl.program_id(1) * BLOCK_M
        if row0 >= tl.load(n_real):
            return
        rows = row0 + tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        inside = cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kin = ks < K
            a = tl.load(x + rows[:, None] * stride_x + ks[None, :], mask=kin[None, :], other=0.0)
            wt = tl.load(
                w + cols[:, None] * stride_w + ks[None, :], mask=inside[:, None] & kin[None, :], other=0.0
            )
            acc += tl.dot(a, tl.trans(wt))
        acc += tl.load(b + cols, mask=inside, other=0.0).to(tl.float32)[None, :]
        if GELU == 1:
            inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = 0.5 * acc * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))
        elif GELU == 2:
            acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
        tl.store(
            out + rows[:, None] * stride_o + cols[None, :], acc.to(out.dtype.element_ty), mask=inside[None, :]
        )


#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of `small_linear`: 16 rows fill the
#: smallest tensor-core tile, narrow column blocks spread a layer's weights over every SM.
SMALL_LINEAR_CONFIG = (16, 32, 128, 4, 3)
_GELU_CODES = {None: 0, "tanh": 1, "exact": 2}


def small_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    n_real: torch.Tensor,
    *,
    gelu: str | None = None,
) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, then GELU if asked ("tanh" or "exact"), computed on CUDA for
    the rows below `n_real` only (to the next multiple of 16): in a small token buffer holding a
    lone query, cuBLAS computes all T rows of every GEMM, and its kernels, not the weights they
    read, set the buffer's time.  Rows past `n_real` are left unwritten (filler: nothing reads
    them).  On CPU, F.linear over every row."""
    if not triton_ready(x):
        y = F.linear(x, weight, bias)
        return y if gelu is None else F.gelu(y, approximate="tanh" if gelu == "tanh" else "none")
    M, K = x.shape
    N = weight.shape[0]
    block_m, block_n, block_k, warps, stages = SMALL_LINEAR_CONFIG
    if M % block_m:
        raise ValueError(f"small_linear over {M} rows: must be a multiple of {block_m}")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _small_linear_kernel[(triton.cdiv(N, block_n), M // block_m)](
        x, weight, bias, out, n_real, N, K, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GELU=_GELU_CODES[gelu], num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return out
