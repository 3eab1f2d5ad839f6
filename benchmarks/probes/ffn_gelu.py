"""Probe (issue 14, the engine-alone target): BERT-base's FFN-in GEMM with bias and GELU in one
Triton kernel, against cuBLASLt's GELU epilogue (what `PackedEncoder` uses on CUDA).

cuBLASLt's epilogue runs the GEMM at ~0.8x its plain rate (BENCHMARKS.md, fifth session), so a
kernel that applies GELU to the fp32 accumulator at cuBLAS's own rate would take ~5 % off a
buffer.  This is the plain Triton tile loop (grouped programs, `tl.dot`), each GELU form, at 2k,
8k and 32k rows.  On the H200 it ran at 0.55-0.77x cuBLASLt, and the whole engine with it in
every layer at 0.88x (twelfth session): not adopted.

    python3 benchmarks/probes/ffn_gelu.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

#: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
CONFIGS = [(128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4), (128, 256, 64, 8, 8, 3),
           (128, 256, 64, 8, 8, 4), (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4),
           (128, 128, 128, 8, 8, 2), (256, 128, 64, 8, 8, 3)]  # fmt: skip


@triton.jit
def _linear_gelu_kernel(
    x, w, b, out, M, N, K, stride_x, stride_w, stride_o,
    GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    # out = gelu(x @ w.T + b): x (M, K), w (N, K) as nn.Linear keeps it; M, N, K multiples of the
    # blocks.  GELU 1: erf (exact), 2: tanh form.
    pid = tl.program_id(0)
    blocks_m = M // BLOCK_M
    blocks_n = N // BLOCK_N
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = x + rm[:, None] * stride_x + rk[None, :]
    w_ptrs = w + rn[:, None] * stride_w + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        acc = tl.dot(tl.load(a_ptrs), tl.trans(tl.load(w_ptrs)), acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    acc += tl.load(b + rn).to(tl.float32)[None, :]
    if GELU == 1:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif GELU == 2:  # tanh(u) = 1 - 2 / (exp(2u) + 1)
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = 0.5 * acc * (2.0 - 2.0 / (tl.exp2(u * 2.8853900817779268) + 1.0))
    tl.store(out + rm[:, None] * stride_o + rn[None, :], acc.to(out.dtype.element_ty))


def linear_gelu(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, approximate: str, config: tuple
) -> torch.Tensor:
    block_m, block_n, block_k, group_m, warps, stages = config
    (M, K), N = x.shape, w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _linear_gelu_kernel[((M // block_m) * (N // block_n),)](
        x, w, b, out, M, N, K, x.stride(0), w.stride(0), out.stride(0),
        GELU=2 if approximate == "tanh" else 1, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        GROUP_M=group_m, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def events_us(fn, n: int = 100) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):
        fn()
    a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        fn()
    e.record()
    e.synchronize()
    return a.elapsed_time(e) * 1000 / n


def main() -> None:
    H, FF = 768, 3072
    half = {"device": "cuda", "dtype": torch.float16}
    w, b = torch.randn(FF, H, **half) * 0.03, torch.randn(FF, **half) * 0.1
    print(torch.cuda.get_device_name(), torch.__version__, "triton", triton.__version__)
    for T in (2048, 8192, 32768):
        x = torch.randn(T, H, **half)
        flops = 2 * T * H * FF
        ref = {a: F.gelu(F.linear(x.float(), w.float(), b.float()), approximate=a) for a in ("none", "tanh")}
        us = events_us(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True))  # noqa: B023
        plain = events_us(lambda: F.linear(x, w, b))  # noqa: B023
        print(f"T={T}: cuBLASLt GELU epilogue {us:6.1f} us ({flops / us / 1e6:4.0f} TFLOP/s); "
              f"no GELU {plain:6.1f} us ({flops / plain / 1e6:4.0f})")  # fmt: skip
        for cfg in CONFIGS:
            for approx in ("none", "tanh"):
                err = (linear_gelu(x, w, b, approx, cfg).float() - ref[approx]).abs().max().item()
                t = events_us(lambda c=cfg, a=approx: linear_gelu(x, w, b, a, c))  # noqa: B023
                rate = f"{flops / t / 1e6:4.0f} TFLOP/s, {us / t:.2f}x cuBLASLt"
                print(f"T={T}: triton {cfg} gelu={approx}: {t:6.1f} us ({rate}), max err {err:.1e}")


if __name__ == "__main__":
    main()
