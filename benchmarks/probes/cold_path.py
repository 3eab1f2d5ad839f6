"""Probe (issue 14, idle latency): what the same small step costs after the thread slept.

A lone query's path is a few tens of µs of Python per step, but in the worker each step runs
after its thread slept (waiting for Redis, the tokenizer, the GPU): `engine.start` used 2.6x the
CPU there that it uses back to back (start_cost.py).  This times two such steps -- tokenizing one
short query, and the null engine's run of it -- back to back, after sleeps of 2 and 20 ms, and
after a sleep followed by a busy spin (which keeps the clock up but touches no memory: if the spin
does not help, what went cold is the caches, not the core's frequency).  No GPU needed:

    python3 benchmarks/probes/cold_path.py [--calls 800]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from vecq.engines import Embedder
from vecq.engines.backends.null import NullEngine
from vecq.engines.backends.torch_packed import packed_shapes
from vecq.engines.base import TokenBatch

TEXT = "a short query number 7"


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _p50_us(step: Callable[[], object], calls: int, sleep_s: float, spin_s: float) -> float:
    took = []
    for _ in range(calls):
        if sleep_s:
            time.sleep(sleep_s)
        _spin(spin_s)
        start = time.perf_counter()
        step()
        took.append(time.perf_counter() - start)
    return float(np.median(took)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=800)
    args = ap.parse_args()
    emb = Embedder.load(backend="null")
    engine = NullEngine(shapes=packed_shapes(emb.spec.max_seq_len), dim=emb.dim, token_budget=32768)
    tokens = emb.tokenizer.encode([TEXT])
    batch = TokenBatch(ids=tokens.flat, lengths=tokens.lengths)
    steps = {
        "tokenize one query": lambda: emb.tokenizer.encode([TEXT]),
        "null engine run": lambda: engine.run(batch),
    }
    print(f"p50 µs of one step over {args.calls} calls, after the thread slept (then spun):")
    for sleep_ms, spin_us in ((0, 0), (2, 0), (2, 1000), (20, 0), (20, 500)):
        cells = [
            f"{_p50_us(step, args.calls, sleep_ms / 1000, spin_us / 1e6):7.1f}" for step in steps.values()
        ]
        print(
            f"  slept {sleep_ms:>2} ms, spun {spin_us:>4} µs: "
            + "   ".join(f"{name} {cell}" for name, cell in zip(steps, cells, strict=True))
        )


if __name__ == "__main__":
    main()
