"""Probe (issue 16, long inputs): the packed attention kernel's tiles against torch's flash
attention, on buffers of one text length each.

At 8,192 tokens a base-size XLM-R's engine ran 76 texts/s (BENCHMARKS.md, seventh session):
attention is ~1.8x the matmul FLOPs there, and `kernels.ATTENTION_CONFIG` was tuned on 53-token
texts.  For each length, a 32,768-token buffer of texts of that length (12 heads x 64, fp16) is
attended with each (BLOCK_M, BLOCK_N, warps, stages) tile and with `varlen_attn` (torch's
variable-length flash attention); each is checked against one SDPA per text and timed.

    python3 benchmarks/probes/long_attention.py [--lengths 53,512,2048,8192] [--reps 20]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from cuda_timing import cuda_ms  # this folder's

from vecq.engines import kernels

CONFIGS = [(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 8, 2), (128, 64, 8, 2), (128, 64, 4, 3),
           (128, 128, 8, 2), (64, 128, 4, 2)]  # fmt: skip


def _buffer(length: int, T: int, heads: int, head_dim: int):  # type: ignore[no-untyped-def]
    n_texts = T // length
    slots = n_texts + 1
    cu = torch.arange(0, slots + 1, dtype=torch.int32) * length
    cu[n_texts + 1 :] = n_texts * length
    cu = cu.clamp(max=n_texts * length)
    n = n_texts * length
    token = torch.arange(T, dtype=torch.int32)
    seq = torch.where(token < n, torch.searchsorted(cu, token, right=True) - 1, slots).to(torch.int32)
    qkv = torch.randn(T, 3, heads, head_dim, dtype=torch.float16, device="cuda")
    return qkv, seq.cuda(), cu.cuda(), torch.tensor([n], dtype=torch.int32, device="cuda"), n, n_texts


def _time(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    return cuda_ms(fn, reps) * 1000  # µs


def _one_length(length: int, reps: int, heads: int = 12, head_dim: int = 64, T: int = 32768) -> None:
    qkv, seq, cu, n_real, n, n_texts = _buffer(length, T, heads, head_dim)
    flops = 4 * n_texts * length * length * heads * head_dim  # QK^T and PV
    two = cu[:3].clone().clamp(max=2 * length)
    check = kernels._attention_reference(qkv[: 2 * length].float(), two, 2 * length, heads=heads)
    print(
        f"\nlength {length}: {n_texts} texts in {T} tokens ({flops / 1e9:.1f} GFLOP per buffer)", flush=True
    )
    for cfg in CONFIGS:
        run = partial(kernels.packed_attention, qkv, seq, cu, n_real, heads=heads, config=cfg)
        try:
            err = (run()[: 2 * length].float() - check).abs().max().item()
            us = _time(run, reps)
            print(
                f"  triton {cfg}: {us:8.0f} µs  {flops / us / 1e6:6.1f} TFLOP/s  max err {err:.1e}",
                flush=True,
            )
        except Exception as exc:  # a tile too big for shared memory, say
            print(f"  triton {cfg}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
    try:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (qkv[:n, j] for j in range(3))
        flash = partial(
            varlen_attn, q, k, v, cu[: n_texts + 1].clone(), cu[: n_texts + 1].clone(), length, length
        )
        err = (flash()[: 2 * length].float().reshape(2 * length, -1) - check).abs().max().item()
        us = _time(flash, reps)
        print(
            f"  torch varlen_attn (flash): {us:8.0f} µs  {flops / us / 1e6:6.1f} TFLOP/s  max err {err:.1e}"
        )
    except Exception as exc:
        print(f"  torch varlen_attn: {type(exc).__name__}: {str(exc)[:120]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="53,512,2048,8192")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    for length in [int(x) for x in args.lengths.split(",")]:
        _one_length(length, args.reps)


if __name__ == "__main__":
    main()
