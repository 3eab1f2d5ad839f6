"""Probe (issue 14, the engine-alone target): where a packed BERT-base buffer's time goes, and
what the served engine loses between its kernels and a sustained run.

On the benchmark model (`random-bert-base-en`, torch fp16, vecq's packed engine) and corpus
(`make_corpus(50000, seed=7)`), one CUDA device:

- `sustained`: the engine alone over the whole corpus in 32k-token batches, three rounds, as the
  bench's row does it, with the GPU's SM clock and power sampled beside it (nvidia-smi), and
  each batch's graph time from CUDA events: is the gap host time or a slower card?
- `profile`: `torch.profiler` kernel totals per buffer over five buffers, grouped by kernel;
- `attention`: vecq's packed attention kernel on real buffers, per config; µs per layer and the
  useful FLOP rate;
- `gemm`: BERT-base's four GEMMs at 32k tokens alone, with and without the GELU epilogue;
- `small`: one text: graph replay on the device, `engine.run` on the host, kernels per graph.

    python3 benchmarks/probes/engine_kernels.py [--parts sustained,profile,attention,gemm,small]

Needs vecq importable (benchmarks/gpu_host.sh installs it).  Results: BENCHMARKS.md, issue 14.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vecq.engines import backends
from vecq.engines.backends.torch import served_shapes
from vecq.engines.base import TokenBatch, run_in_turn
from vecq.engines.batching import token_batches
from vecq.engines.kernels import packed_attention
from vecq.engines.spec import read_spec
from vecq.engines.tokenizer import TextTokenizer
from vecq.worker.bench.corpus import make_corpus
from vecq.worker.bench.models import RANDOM_BERT_BASE_EN, model_dir

CONFIGS = [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3),
           (128, 128, 8, 2), (64, 128, 4, 2)]  # fmt: skip


def engine_and_batches(tmp: Path, budget: int):  # type: ignore[no-untyped-def]
    root = model_dir(RANDOM_BERT_BASE_EN, tmp)
    spec = read_spec(root)
    shapes = served_shapes(root, spec, "cuda")
    engine = backends.for_model_dir("torch", root, spec=spec, shapes=shapes, device="cuda", precision="fp16")
    engine.warmup()
    tok = TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len)
    texts = make_corpus(50000, seed=7)
    encoded = tok.encode(texts)
    batches = token_batches(encoded, budget=budget, max_rows=engine.max_rows)
    print(f"{len(texts)} texts, {int(encoded.lengths.sum())} tokens, {len(batches)} batches of <= {budget}")
    return engine, batches, len(texts), int(encoded.lengths.sum())


def sorted_batch(b: TokenBatch) -> TokenBatch:
    order = np.argsort(b.lengths, kind="stable")
    starts = np.concatenate([[0], np.cumsum(b.lengths)[:-1]])
    ids = np.concatenate([b.ids[starts[i] : starts[i] + b.lengths[i]] for i in order])
    return TokenBatch(ids, b.lengths[order])


def sustained(engine, batches, n_texts: int, n_tokens: int) -> None:  # type: ignore[no-untyped-def]
    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu", "--format=csv,noheader",
         "-lms", "100"], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for _ in run_in_turn(engine, batches[:20]):
        pass
    for label, bs in (
        ("arrival order", batches),
        ("sorted by length in each batch", [sorted_batch(b) for b in batches]),
    ):
        for r in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in run_in_turn(engine, bs):
                pass
            dt = time.perf_counter() - t0
            print(
                f"sustained [{label}] round {r}: {n_texts / dt:,.0f} texts/s, "
                f"{n_tokens / dt / 1e6:.2f}M tok/s ({dt:.3f}s)"
            )
    # graph time per batch from events: the device's own view
    times = []
    graph = engine.tracks[0].graphs[engine.buckets[-1], False]
    for _ in range(60):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    full = engine.tracks[0].n.item()
    print(f"graph replay of the 32k buffer back to back (last batch's {full} tokens): median "
          f"{statistics.median(times):.2f} ms, first {times[0]:.2f}, last {times[-1]:.2f}")  # fmt: skip
    # the whole corpus with one event pair per batch
    evs = []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        started = engine.start(batch)
        b.record()
        evs.append((a, b, started))
        if len(evs) >= 2:
            evs[-2][2].result()
    evs[-1][2].result()
    wall = time.perf_counter() - t0
    dev = sum(a.elapsed_time(b) for a, b, _ in evs) / 1000
    gaps = sum(evs[i][1].elapsed_time(evs[i + 1][0]) for i in range(len(evs) - 1)) / 1000
    print(
        f"per-batch events: wall {wall:.3f}s, device busy {dev:.3f}s ({dev / wall:.1%}), "
        f"gaps between batches {gaps * 1000:.1f} ms"
    )
    smi.terminate()
    rows = [line.split(", ") for line in smi.communicate()[0].splitlines() if line.strip()]
    if rows:
        sm = [float(r[0].split()[0]) for r in rows]
        pw = [float(r[2].split()[0]) for r in rows]
        print(f"nvidia-smi over the run ({len(rows)} samples): SM clock min/median/max {min(sm):.0f}/"
              f"{statistics.median(sm):.0f}/{max(sm):.0f} MHz, "
              f"power median/max {statistics.median(pw):.0f}/{max(pw):.0f} W, "
              f"mem clock {rows[-1][1]}, temp {rows[-1][3]}")  # fmt: skip


def profile(engine, batches) -> None:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    sample = batches[10:15]
    for _ in run_in_turn(engine, sample):
        pass
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in run_in_turn(engine, sample):
            pass
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            totals[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            counts[e.name] += 1
    total = sum(totals.values())
    print(f"profile: {total / len(sample) / 1000:.2f} ms of kernels per buffer ({len(sample)} buffers)")
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {t / len(sample):8.0f} us/buffer  {counts[name] // len(sample):4d}x  {name[:110]}")


def attention(engine, batches) -> None:  # type: ignore[no-untyped-def]
    """µs per layer of the served kernel per config, on real buffers (a variant is A/B-tested by
    adding it to `kernels`: the fifth session's per-row-bounds kernel measured 190.6 µs against
    132.3, BENCHMARKS.md)."""
    heads, head_dim, T = 12, 64, 32768
    sample = batches[10:16]
    inputs = []
    for b in sample:
        n = b.real_tokens
        cu = torch.zeros(engine.slots + 1, dtype=torch.int32)
        cu[1 : b.rows + 1] = torch.cumsum(torch.tensor(b.lengths, dtype=torch.int32), 0)
        cu[b.rows + 1 :] = n
        cu = cu.cuda()
        token = torch.arange(T, device="cuda", dtype=torch.int32)
        seq = torch.where(token < n, torch.searchsorted(cu, token, right=True) - 1, engine.slots)
        nr = torch.tensor([n], dtype=torch.int32, device="cuda")
        qkv = torch.randn(T, 3, heads, head_dim, device="cuda", dtype=torch.float16)
        useful = 4 * float((b.lengths.astype(np.float64) ** 2).sum()) * head_dim * heads
        inputs.append((qkv, seq.to(torch.int32), cu, nr, useful))
    kernels = {"served": packed_attention}
    for cfg in CONFIGS:
        for name, fn in kernels.items():
            us = []
            for qkv, seq, cu, nr, _ in inputs:
                try:
                    want = packed_attention(qkv, seq, cu, nr, heads=heads)
                    got = fn(qkv, seq, cu, nr, heads=heads, config=cfg)
                    err = (got.view(T, -1).float() - want.float()).abs().max().item()
                except Exception as exc:  # a config Triton cannot build on this card
                    print(f"attention {name} {cfg}: {type(exc).__name__}: {str(exc)[:80]}")
                    break
                a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(20):
                    fn(qkv, seq, cu, nr, heads=heads, config=cfg)
                e.record()
                e.synchronize()
                us.append(a.elapsed_time(e) * 1000 / 20)
            else:
                t = statistics.mean(us)
                rate = statistics.mean(i[4] for i in inputs) / (t * 1e-6) / 1e12
                print(
                    f"attention {name} {cfg}: {t:6.1f} us per layer, useful {rate:5.1f} TFLOP/s, "
                    f"max |diff| {err:.1e}"
                )


def gemm() -> None:
    T, H, FF = 32768, 768, 3072
    x = torch.randn(T, H, device="cuda", dtype=torch.float16)
    h = torch.randn(T, FF, device="cuda", dtype=torch.float16)
    sizes = {"qkv": (3 * H, H), "out": (H, H), "ffn_in": (FF, H), "ffn_out": (H, FF)}
    half = {"device": "cuda", "dtype": torch.float16}
    w = {n: (torch.randn(o, i, **half) * 0.02, torch.zeros(o, **half)) for n, (o, i) in sizes.items()}
    cases = {
        "qkv linear": lambda: F.linear(x, *w["qkv"]),
        "attention-out linear": lambda: F.linear(x, *w["out"]),
        "ffn-in linear (no GELU)": lambda: F.linear(x, *w["ffn_in"]),
        "ffn-in addmm + GELU epilogue": lambda: torch._addmm_activation(
            w["ffn_in"][1], x, w["ffn_in"][0].t(), use_gelu=True
        ),
        "ffn-in linear, then F.gelu tanh": lambda: F.gelu(F.linear(x, *w["ffn_in"]), approximate="tanh"),
        "ffn-out linear": lambda: F.linear(h, *w["ffn_out"]),
    }
    for name, fn in cases.items():
        for _ in range(5):
            fn()
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(50):
            fn()
        e.record()
        e.synchronize()
        us = a.elapsed_time(e) * 1000 / 50
        flops = {"qkv": 2 * T * H * 3 * H, "att": 2 * T * H * H, "ffn": 2 * T * H * FF}
        f = flops["qkv"] if "qkv" in name else flops["att"] if "attention" in name else flops["ffn"]
        print(f"gemm {name}: {us:6.1f} us, {f / us / 1e6:5.0f} TFLOP/s")


def small(engine) -> None:  # type: ignore[no-untyped-def]
    one = TokenBatch(np.arange(101, 117, dtype=np.int64), np.array([16]))
    for _ in range(20):
        engine.run(one)
    t = []
    for _ in range(200):
        t0 = time.perf_counter()
        engine.run(one)
        t.append(time.perf_counter() - t0)
    print(f"small: engine.run of one 16-token text: median {statistics.median(t) * 1e3:.3f} ms on the host")
    for T in engine.buckets[:3]:
        g = engine.tracks[0].graphs[T, False]
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(50):
            g.graph.replay()
        e.record()
        e.synchronize()
        print(
            f"small: graph replay of the {T}-token buffer: "
            f"{a.elapsed_time(e) / 50 * 1000:.0f} us on the device"
        )
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    track = engine.tracks[0]
    ids = track.ids[:256]
    with torch.inference_mode(), prof(activities=[ProfilerActivity.CUDA]) as p:
        engine.module(ids, track.cu, track.n)
        torch.cuda.synchronize()
    kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    names = collections.Counter(e.name.split("<")[0][:60] for e in kernels)
    print(
        f"small: one eager forward of the 256 buffer launches {len(kernels)} kernels; "
        f"most: {names.most_common(6)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="sustained,profile,attention,gemm,small")
    parts = ap.parse_args().parts.split(",")
    print(torch.cuda.get_device_name(), torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        engine, batches, n_texts, n_tokens = engine_and_batches(Path(tmp), 32768)
        with torch.inference_mode():
            if "sustained" in parts:
                sustained(engine, batches, n_texts, n_tokens)
            if "profile" in parts:
                profile(engine, batches)
            if "attention" in parts:
                attention(engine, batches)
            if "gemm" in parts:
                gemm()
            if "small" in parts:
                small(engine)


if __name__ == "__main__":
    main()
