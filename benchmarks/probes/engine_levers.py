"""Probe (issue 14, fourteenth session): the packed torch engine's tracks, and a lone query's
small buffer, each measured against what is served, in one run on one CUDA device.

- `tracks`: the engine alone over the corpus with 1, 2 and 3 tracks (`PackedGraphEngine(tracks=)`,
  each batch on a track of its own stream) and 2 to 4 batches in flight; first, that the vectors
  of batches run side by side on two tracks are those of one track.  Two engines on two streams
  (this probe's first version, run this session) ran 15-18 % faster than one but gave other
  vectors: every graph had been captured on torch's one shared capture stream, so all of them
  wrote one cuBLAS workspace.
- `small`: a lone query's 128-token buffer: its kernels one by one (eager, profiled), and
  `engine.run` through the graph that holds its own copies against one copy call per batch,
  back to back and after 2 ms asleep; then `engine.start` alone and a cProfile of it.

The thirteenth session's `skinny` (a small-M Triton linear over the real rows) and `blas`
(cuBLAS against cuBLASLt) parts found nothing to gain and are gone (BENCHMARKS.md, raw numbers
in benchmarks/results/2026-12-08-fourteenth-session.txt).

    python3 benchmarks/probes/engine_levers.py [--parts tracks,small]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
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


def drive(engine: PackedGraphEngine, batches: list[TokenBatch], depth: int) -> list[np.ndarray]:
    """Every batch through `engine` with `depth` of them in flight, collected in order."""
    pending: collections.deque = collections.deque()
    out = []
    for b in batches:
        pending.append(engine.start(b))
        if len(pending) >= depth:
            out.append(pending.popleft().result())
    out += [p.result() for p in pending]
    return out


def tracks(engine, batches, n_texts: int, n_tokens: int) -> None:  # type: ignore[no-untyped-def]
    engines = {}
    for L in (1, 2, 3):
        t0 = time.perf_counter()
        e = engines[L] = PackedGraphEngine(engine.module, shapes=engine.shapes, dim=engine.dim, tracks=L)
        e.warmup()
        print(f"tracks {L}: warmup {time.perf_counter() - t0:.1f} s, {e.captures} graphs, "
              f"{torch.cuda.memory_reserved() / 2**30:.1f} GiB reserved")  # fmt: skip
    want = np.concatenate(drive(engines[1], batches[:12], 2))
    for L, depth in ((2, 2), (3, 3)):
        before = list(engines[L].runs_by_track)
        got = np.concatenate(drive(engines[L], batches[:12], depth))
        used = [a - b for a, b in zip(engines[L].runs_by_track, before, strict=True)]
        print(f"tracks {L}, {depth} in flight: vectors = one track's: max |diff| "
              f"{np.abs(got - want).max():.2e}; batches per track {used}")  # fmt: skip
    for r in range(2):
        for L, depth in ((1, 2), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4)):
            drive(engines[L], batches[:10], depth)
            torch.cuda.synchronize()
            with Smi() as smi:
                t0 = time.perf_counter()
                drive(engines[L], batches, depth)
                dt = time.perf_counter() - t0
            print(
                f"tracks round {r}: {L} tracks, {depth} in flight: {n_texts / dt:,.0f} texts/s, "
                f"{n_tokens / dt / 1e6:.2f}M tok/s ({dt:.3f} s; {smi.text})"
            )
    for e in engines.values():
        e.close()
    del engines
    torch.cuda.empty_cache()


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


def small(engine) -> None:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    one = one_query()
    torch.cuda.synchronize()
    track = engine.tracks[engine._next]  # every track is idle: the next in turn takes it
    engine.run(one)  # leaves this batch in that track's inputs
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(3):
            engine.module(track.ids[:128], track.cu, track.n)
        torch.cuda.synchronize()
    kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by: dict[str, list[float]] = collections.defaultdict(list)
    for k in kernels:
        by[k.name[:70]].append(k.device_time_total if hasattr(k, "device_time_total") else k.cuda_time_total)
    total = sum(sum(v) for v in by.values()) / 3
    print(f"small: 128 buffer, {len(kernels) // 3} kernels, {total:.0f} us of kernel time per forward")
    for name, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(v) / 3:7.1f} us  {len(v) // 3:3d}x  {statistics.median(v):5.1f} us each  {name}")
    us = replay_us(track.graphs[128, False].graph, 200)
    print(f"small: graph replay of the 128 buffer back to back: {us:.0f} us")
    few = [dict(x.few) for x in engine.tracks]  # the graphs holding their own copies

    def one_copy(batch: TokenBatch) -> np.ndarray:  # the copy calls, as before the few-row graphs
        for x in engine.tracks:
            x.few = {}
        try:
            return engine.run(batch)
        finally:
            for x, f in zip(engine.tracks, few, strict=True):
                x.few = f

    print(f"small: few-row graphs {sorted(few[0])} per track; vs one copy per batch: max |diff| "
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
    starts = []
    for _ in range(600):  # engine.start alone (the host's part), the device drained before each
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.start(one)
        starts.append(time.perf_counter() - t0)
    print(f"small: engine.start of one query, device idle: p50 {statistics.median(starts) * 1e6:.0f} us")
    profile = cProfile.Profile()
    for _ in range(600):
        torch.cuda.synchronize()
        profile.enable()
        engine.start(one)
        profile.disable()
    print("small: engine.start, cProfile of 600 calls (tottime, the 14 largest):")
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="tracks,small")
    parts = ap.parse_args().parts.split(",")
    print(torch.cuda.get_device_name(), torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        engine, batches, n_texts, n_tokens = engine_and_batches(Path(tmp), 32768)
        with torch.inference_mode():
            for _ in run_in_turn(engine, batches[:20]):
                pass
            for part in parts:
                t0 = time.perf_counter()
                if part == "tracks":
                    tracks(engine, batches, n_texts, n_tokens)
                elif part == "small":
                    small(engine)
                print(f"[{part}: {time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
