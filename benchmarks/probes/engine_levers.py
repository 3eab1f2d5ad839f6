"""Probe (issue 14, thirteenth session): four levers on the packed torch engine, each measured
against what is served, in one run on one CUDA device.

- `streams`: the engine alone over the corpus in 32k-token buffers, one stream (as served)
  against two engines on two streams taking batches in turn.  A power-limited card whose time is
  74 % GEMMs may still have watts to spare while attention and LayerNorm run; a second buffer's
  GEMMs beside them would spend it.
- `blas`: cuBLAS against cuBLASLt (`torch.backends.cuda.preferred_blas_library`) for the four
  GEMMs at 16 … 32k rows (each in a CUDA graph of 20 calls), and whole-buffer graph replays.
- `small`: a lone query's 128-token buffer: its kernels one by one (eager, profiled), and
  `engine.run` back to back and after 2 ms asleep -- with an engine whose small graphs hold
  their own copies (32fcb57, pending its GPU tests) also against one copy call per batch.
- `skinny`: a small-M Triton linear that skips the row blocks past the real tokens, against
  cuBLAS, on the 128-token buffer's four GEMMs, then whole small buffers with every linear in it.

    python3 benchmarks/probes/engine_levers.py [--parts small,skinny,blas,streams]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from engine_kernels import engine_and_batches  # this folder's probe: the same model, corpus and engine

from vecq.engines.backends.torch_packed import PackedGraphEngine
from vecq.engines.base import TokenBatch, run_in_turn


class Smi:
    """nvidia-smi sampled every 100 ms while the block runs: SM clock and power medians."""

    def __enter__(self) -> Smi:
        self.p = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        self.p.terminate()
        rows = [r.split(", ") for r in self.p.communicate()[0].splitlines() if r.strip()]
        rows = rows[3:] or rows  # the first samples precede the load
        try:
            self.text = (
                f"SM {statistics.median(float(r[0]) for r in rows):.0f} MHz, "
                f"{statistics.median(float(r[1]) for r in rows):.0f} W"
            )
        except (ValueError, IndexError, statistics.StatisticsError):
            self.text = "nvidia-smi: no samples"


def two_streams(engines: list[PackedGraphEngine], batches: list[TokenBatch]) -> None:
    streams = [torch.cuda.Stream() for _ in engines]
    pending = []
    for i, b in enumerate(batches):
        k = i % len(engines)
        with torch.cuda.stream(streams[k]):
            pending.append(engines[k].start(b))
        if len(pending) > 2 * len(engines) - 1:
            pending.pop(0).result()
    for p in pending:
        p.result()


def streams(engine, batches, n_texts: int, n_tokens: int) -> None:  # type: ignore[no-untyped-def]
    lanes = [
        PackedGraphEngine(engine.module, shapes=engine.shapes, dim=engine.dim, buckets=(16384, 32768))
        for _ in range(3)
    ]
    for e in lanes:
        e.warmup()
    for _ in run_in_turn(engine, batches[:20]):
        pass
    # first a parity check: the same batches on two streams give the same vectors
    want = np.concatenate(list(run_in_turn(lanes[0], batches[:6])))
    got = []
    s = [torch.cuda.Stream(), torch.cuda.Stream()]
    for i in range(0, 6, 2):
        with torch.cuda.stream(s[0]):
            a = lanes[0].start(batches[i])
        with torch.cuda.stream(s[1]):
            b = lanes[1].start(batches[i + 1])
        got += [a.result(), b.result()]
    diff = np.abs(np.concatenate(got) - want).max()
    print(f"streams: two-stream vectors = one-stream: max |diff| {diff:.2e}")
    for r in range(2):
        for label, fn in (
            ("one stream (served)", lambda: [None for _ in run_in_turn(engine, batches)]),
            ("two engines, two streams", lambda: two_streams(lanes[:2], batches)),
            ("three engines, three streams", lambda: two_streams(lanes, batches)),
        ):
            torch.cuda.synchronize()
            with Smi() as smi:
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            print(
                f"streams round {r} {label}: {n_texts / dt:,.0f} texts/s, {n_tokens / dt / 1e6:.2f}M tok/s "
                f"({dt:.3f} s; {smi.text})"
            )


try:
    import triton
    import triton.language as tl
except ImportError:  # CPU torch
    triton = None

if triton is not None:

    @triton.jit
    def _skinny_kernel(
        x, w, b, out, n_real, N, K, stride_x, stride_w, stride_o,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr,
    ):  # fmt: skip
        # out[rows, cols] = x[rows] @ w[cols].T + b (GELU tanh): only row blocks below n_real
        row0 = tl.program_id(1) * BLOCK_M
        if row0 >= tl.load(n_real):
            return
        rows = row0 + tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = tl.load(x + rows[:, None] * stride_x + (k0 + ks)[None, :])
            bw = tl.load(w + cols[:, None] * stride_w + (k0 + ks)[None, :])
            acc += tl.dot(a, tl.trans(bw))
        acc += tl.load(b + cols).to(tl.float32)[None, :]
        if GELU:
            inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = 0.5 * acc * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))
        tl.store(out + rows[:, None] * stride_o + cols[None, :], acc.to(out.dtype.element_ty))


def skinny(x, w, b, n_real, *, gelu: bool = False, bm: int = 16, bn: int = 32, bk: int = 128,
           warps: int = 4, stages: int = 3):  # type: ignore[no-untyped-def]  # fmt: skip
    """A small-M linear that skips the row blocks past `n_real` (a probe, not served)."""
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    _skinny_kernel[(N // bn, M // bm)](
        x, w, b, out, n_real, N, K, x.stride(0), w.stride(0), out.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GELU=gelu, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def skinny_vs_cublas() -> None:
    """The four GEMMs of a 128-token buffer holding 7 and 128 real tokens: cuBLAS (all 128
    rows) against `skinny` per tile, µs in a graph, and the max error to cuBLAS."""
    H, FF, T = 768, 3072, 128
    half = {"device": "cuda", "dtype": torch.float16}
    torch.manual_seed(0)
    w = {n: (torch.randn(o, i, **half) * 0.03, torch.randn(o, **half) * 0.1) for n, (o, i) in
         {"qkv": (3 * H, H), "out": (H, H), "ffn_in": (FF, H), "ffn_out": (H, FF)}.items()}  # fmt: skip
    x = torch.randn(T, H, **half)
    h = torch.randn(T, FF, **half) * 0.5
    tiles = [(16, 32, 128, 4, 3), (16, 16, 256, 4, 3), (16, 64, 64, 4, 4), (32, 32, 128, 4, 3),
             (64, 32, 64, 4, 3), (16, 32, 256, 8, 3)]  # fmt: skip
    cases = (("qkv", x, False), ("out", x, False), ("ffn_in", x, True), ("ffn_out", h, False))
    for real in (7, 128):
        n = torch.tensor([real], dtype=torch.int32, device="cuda")
        for name, inp, gelu in cases:
            wt, bias = w[name]
            if gelu:
                ref = functools.partial(torch._addmm_activation, bias, inp, wt.t(), use_gelu=True)
            else:
                ref = functools.partial(F.linear, inp, wt, bias)
            want = ref()
            line = [f"cublas {graphed(ref):.1f}"]
            for bm, bn, bk, warps, stages in tiles:
                fn = functools.partial(
                    skinny, inp, wt, bias, n, gelu=gelu, bm=bm, bn=bn, bk=bk, warps=warps, stages=stages
                )
                try:
                    got = fn()
                    err = (got[:real].float() - want[:real].float()).abs().max().item()
                    line.append(f"{bm}x{bn}x{bk}w{warps}s{stages} {graphed(fn):.1f} (err {err:.1e})")
                except Exception as exc:
                    line.append(f"{bm}x{bn}x{bk}: {type(exc).__name__}")
            print(f"skinny {real:3d} real rows, {name}: us " + ", ".join(line))


@contextlib.contextmanager
def skinny_gemms(n_real: torch.Tensor, tile: tuple[int, int, int, int, int]):  # type: ignore[no-untyped-def]
    """While open, the packed encoder's linears (F.linear, and the FFN-in's GELU epilogue) run
    `skinny` over the rows below `n_real`: what a capture inside it bakes into its graph."""
    bm, bn, bk, warps, stages = tile
    kw = {"bm": bm, "bn": bn, "bk": bk, "warps": warps, "stages": stages}

    def linear(x, w, b=None):  # type: ignore[no-untyped-def]
        return skinny(x, w, b, n_real, gelu=False, **kw)

    def addmm_act(bias, x, wt, use_gelu=False):  # type: ignore[no-untyped-def]
        return skinny(x, wt.t(), bias, n_real, gelu=use_gelu, **kw)

    with mock.patch.object(F, "linear", linear), mock.patch.object(torch, "_addmm_activation", addmm_act):
        yield


def skinny_buffers(engine, batches) -> None:  # type: ignore[no-untyped-def]
    """Whole small buffers with every linear in `skinny` (tile `SKINNY_TILE`), against the
    served engine (cuBLAS): vectors' cosine, device µs per replay, and `engine.run` of one query."""
    from vecq.engines.parity import cosines

    sk = PackedGraphEngine(engine.module, shapes=engine.shapes, dim=engine.dim, buckets=(128, 256, 512, 1024))
    with skinny_gemms(sk._n, SKINNY_TILE):
        sk.warmup()
    one = one_query()
    sample = [one, TokenBatch(batches[3].ids[: batches[3].lengths[:16].sum()], batches[3].lengths[:16])]
    for b in sample:
        print(f"skinny buffers: {b.rows} texts, {b.real_tokens} tokens: cosine to served "
              f"{cosines(sk.run(b), engine.run(b)).min():.6f}")  # fmt: skip
    for T in (128, 256, 512, 1024):
        m = (T - 40) // 50  # texts of 50 tokens, as the corpus's
        fill = TokenBatch(batches[5].ids[: 50 * m], np.full(m, 50))
        line = []
        for e in (engine, sk):
            e.run(fill)
            line.append(replay_us(e._graphs[T, False].graph, 200))
        print(f"skinny buffers: {T}-token buffer, {50 * m} real tokens: device us served {line[0]:.0f}, "
              f"skinny {line[1]:.0f}")  # fmt: skip
    for label, e in (("served", engine), ("skinny", sk)):
        t = []
        for _ in range(600):
            t0 = time.perf_counter()
            e.run(one)
            t.append(time.perf_counter() - t0)
        print(f"skinny buffers: engine.run of one query, {label}: p50 {statistics.median(t) * 1e6:.0f} us")


#: The tile `skinny_buffers` serves with (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages).
SKINNY_TILE = (16, 32, 128, 4, 3)


def one_query() -> TokenBatch:
    """A lone 7-token query ("[CLS] hello world is a test [SEP]" in the English vocab)."""
    return TokenBatch(np.array([101, 7592, 2088, 2003, 1037, 3231, 102], dtype=np.int64), np.array([7]))


def replay_us(graph, reps: int) -> float:  # type: ignore[no-untyped-def]
    """µs per replay of `graph`, `reps` back to back, by CUDA events."""
    a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        graph.replay()
    e.record()
    e.synchronize()
    return a.elapsed_time(e) * 1000 / reps


def graphed(fn, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    """µs per call of `fn`, from a CUDA graph of `reps` calls replayed 10 times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    return replay_us(g, 10) / reps


def blas(engine) -> None:  # type: ignore[no-untyped-def]
    H, FF = 768, 3072
    half = {"device": "cuda", "dtype": torch.float16}
    w = {n: (torch.randn(o, i, **half) * 0.02, torch.zeros(o, **half)) for n, (o, i) in
         {"qkv": (3 * H, H), "out": (H, H), "ffn_in": (FF, H), "ffn_out": (H, FF)}.items()}  # fmt: skip
    libs = ["cublas", "cublaslt"]
    for M in (16, 64, 128, 256, 1024, 32768):
        x = torch.randn(M, H, **half)
        h = torch.randn(M, FF, **half)
        cases = {
            "qkv": lambda x=x: F.linear(x, *w["qkv"]),
            "out": lambda x=x: F.linear(x, *w["out"]),
            "ffn_in+gelu": lambda x=x: torch._addmm_activation(
                w["ffn_in"][1], x, w["ffn_in"][0].t(), use_gelu=True
            ),
            "ffn_out": lambda h=h: F.linear(h, *w["ffn_out"]),
        }
        line = []
        for name, fn in cases.items():
            got = []
            for lib in libs:
                torch.backends.cuda.preferred_blas_library(lib)
                got.append(graphed(fn, reps=20 if M <= 1024 else 5))
            line.append(f"{name} {got[0]:.1f}/{got[1]:.1f}")
        torch.backends.cuda.preferred_blas_library("cublas")
        print(f"blas M={M}: us cublas/cublaslt: " + ", ".join(line))
    for lib in libs:
        torch.backends.cuda.preferred_blas_library(lib)
        e = PackedGraphEngine(engine.module, shapes=engine.shapes, dim=engine.dim, buckets=(128, 256, 32768))
        e.warmup()
        e._n.fill_(32768 - 200)
        e._cu[1:].fill_(32768 - 200)
        times = {}
        for T in (128, 256, 32768):
            g = e._graphs[T, False].graph
            g.replay()
            times[T] = replay_us(g, 200 if T < 1000 else 30)
        line = ", ".join(f"{T}: {t:.0f}" for T, t in times.items())
        print(f"blas {lib}: graph replay us per buffer: {line}")
    torch.backends.cuda.preferred_blas_library("cublas")


def small(engine) -> None:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    one = one_query()
    engine.run(one)  # leaves this batch in the engine's inputs
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(3):
            engine.module(engine._ids[:128], engine._cu, engine._n)
        torch.cuda.synchronize()
    kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by: dict[str, list[float]] = collections.defaultdict(list)
    for k in kernels:
        by[k.name[:70]].append(k.device_time_total if hasattr(k, "device_time_total") else k.cuda_time_total)
    total = sum(sum(v) for v in by.values()) / 3
    print(f"small: 128 buffer, {len(kernels) // 3} kernels, {total:.0f} us of kernel time per forward")
    for name, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(v) / 3:7.1f} us  {len(v) // 3:3d}x  {statistics.median(v):5.1f} us each  {name}")
    us = replay_us(engine._graphs[128, False].graph, 200)
    print(f"small: graph replay of the 128 buffer back to back: {us:.0f} us")
    few = dict(getattr(engine, "_few", {}))  # graphs holding their own copies (work in progress)

    def one_copy(batch: TokenBatch) -> np.ndarray:  # the copy calls, as before the few-row graphs
        engine._few = {}
        try:
            return engine.run(batch)
        finally:
            engine._few = few

    print(f"small: few-row graphs {sorted(few)}; vs one copy per batch: max |diff| "
          f"{np.abs(engine.run(one) - one_copy(one)).max():.2e}")  # fmt: skip
    variants = {"engine.run (served: copies in the graph)": engine.run, "one copy call per batch": one_copy}
    for gap in (0.0, 0.002):
        for label, fn in variants.items():
            t = []
            for _ in range(600):
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter()
                fn(one)
                t.append(time.perf_counter() - t0)
            print(f"small: gap {gap * 1e3:.0f} ms, {label}: p50 {statistics.median(t) * 1e6:.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="small,skinny,blas,streams")
    parts = ap.parse_args().parts.split(",")
    print(torch.cuda.get_device_name(), torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        engine, batches, n_texts, n_tokens = engine_and_batches(Path(tmp), 32768)
        with torch.inference_mode():
            for part in parts:
                t0 = time.perf_counter()
                if part == "streams":
                    streams(engine, batches, n_texts, n_tokens)
                elif part == "blas":
                    blas(engine)
                elif part == "small":
                    small(engine)
                elif part == "skinny":
                    skinny_vs_cublas()
                    skinny_buffers(engine, batches)
                print(f"[{part}: {time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
