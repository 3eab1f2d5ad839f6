"""Probe (issue 14, idle latency): what a lone query's `PackedGraphEngine.start` spends its
~0.3 ms of CPU on (latency_path.py measures the whole call: 0.54 ms wall on the H200).

The benchmark model (BERT-base, bert-base-uncased's WordPiece) on the packed torch fp16 engine,
warmed; one 8-token text packed as the worker packs it, then each step of `start` and `result`
timed on its own over many calls (perf_counter around each, the GPU idle between calls as for a
lone query), plus the graph replay alone with the GPU drained before each.  `--gap-ms 0,2`: once back to back,
once asleep 2 ms before each call (in the worker the same call used 2.6x this CPU: caches and
clocks gone cold while its thread slept between queries is one reading to test):

    python3 benchmarks/probes/start_cost.py [--calls 2000] [--gap-ms 0,2]
"""

from __future__ import annotations

import argparse
import bisect
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from worker_host import bench_embedder  # this folder's probe: the same model and engines

from vecq.engines.backends.torch_packed import pack_into
from vecq.engines.base import TokenBatch


def _steps(engine, batch, calls: int, gap_s: float = 0.0) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    """µs of each step of start() + result(), spelled out as torch_packed.py runs them (with
    copy calls, not the few-row graph); `gap_s` asleep before each call, as a worker's engine
    thread sleeps between lone queries."""
    took: dict[str, list[float]] = {}

    def stamp(name: str, since: float) -> float:
        now = time.perf_counter()
        took.setdefault(name, []).append((now - since) * 1e6)
        return now

    for _ in range(calls):
        torch.cuda.synchronize()
        if gap_s:
            time.sleep(gap_s)
        t0 = t = time.perf_counter()
        track = engine.tracks[engine._pick_track()]
        t = stamp("pick a track", t)
        _, stage = track.next_staging()
        t = stamp("event sync (previous batch)", t)
        ids, cu, n_real = track.layout.views(stage.block.numpy())
        n = pack_into(batch, ids, cu)
        n_real[0] = n
        T = engine.buckets[bisect.bisect_left(engine.buckets, n)]
        buf = track.graphs[T, False]
        t = stamp("pack_into + bucket", t)
        with torch.cuda.stream(track.stream):
            t = stamp("enter the track's stream", t)
            used = track.layout.ids_at + n
            track.inputs[:used].copy_(stage.block[:used], non_blocking=True)
            t = stamp("H2D inputs (one block)", t)
            buf.graph.replay()
            t = stamp("graph.replay()", t)
            out = stage.out[: batch.rows]
            out.copy_(buf.out[: batch.rows], non_blocking=True)
            t = stamp("D2H out", t)
            stage.done.record()
            t = stamp("event record", t)
        stamp("start() total", t0)
        stage.done.synchronize()
        t = stamp("device wait (result)", t)
        out.numpy().copy()
        stamp("result copy", t)
    return took


def _replay_alone(engine, T: int, calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    graph = engine.tracks[0].graphs[T, False].graph
    took = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t = time.perf_counter()
        graph.replay()
        took.append((time.perf_counter() - t) * 1e6)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--gap-ms", default="0,2", help="sleeps before each call, one pass each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emb = bench_embedder(Path(tmp), "torch", "cuda")
        engine = emb.engine
        tokens = emb.tokenizer.encode(["a short query number 7"])
        batch = TokenBatch(ids=tokens.flat, lengths=tokens.lengths)
        tokens_in = int(batch.lengths.sum())
        for gap in [float(g) for g in args.gap_ms.split(",")]:
            took = _steps(engine, batch, args.calls, gap / 1000)
            print(
                f"{args.calls} lone-query calls, {tokens_in} tokens, buffer {engine.buckets[0]}, "
                f"{gap} ms asleep before each:"
            )
            for name, values in took.items():
                v = np.asarray(values[100:])
                print(f"  {name:<30} p50 {np.median(v):8.1f} µs   p90 {np.percentile(v, 90):8.1f} µs")
        for T in (engine.buckets[0], engine.buckets[-1]):
            v = np.asarray(_replay_alone(engine, T, args.calls // 4)[50:])
            print(f"  graph.replay() alone, {T:>5}-token buffer: p50 {np.median(v):.1f} µs")
        engine.run(batch)
        wall = []
        for _ in range(args.calls):
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine.run(batch)
            wall.append((time.perf_counter() - t) * 1e6)
        print(f"  engine.run() end to end: p50 {np.median(wall[100:]):.1f} µs")


if __name__ == "__main__":
    main()
