"""Probe (issue 14, item 3): how many texts/s this machine's cores tokenize.

A worker's host path cannot outrun its tokenizer, so this measures the benchmark model's
tokenizer (`random-bert-base-en`: bert-base-uncased's WordPiece) on the bench corpus, the ways a
worker can run it: one text per call on one core, `tokenizers`' batch call on its own thread pool
of 1…N threads, N processes each tokenizing its share one text per call, and P processes each
with a pool of T (`--tokenize-processes P --tokenize-threads T`: what those can reach at most).
Each runs in child processes, since `tokenizers` fixes its pool at first use.

    python3 benchmarks/probes/tokenize_rate.py [--texts 20000] [--procs 1,2,4,8] [--threads 1,4,16]
        [--pools 2x4,4x2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from vecq.engines.tokenizer import TextTokenizer
from vecq.worker.bench.corpus import make_corpus
path, n, mode, share, of = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tok = TextTokenizer.from_dir(path, max_seq_len=512).with_parallelism(mode == "batch")
texts = make_corpus(n, seed=7)[share::of]
tok.encode(texts[:64])
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
t = time.perf_counter(); out = tok.encode(texts); el = time.perf_counter() - t
print(json.dumps({"texts": len(texts), "tokens": int(out.lengths.sum()), "seconds": el}))
"""


def run(path: str, n: int, mode: str, of: int, threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["RAYON_NUM_THREADS"] = str(threads)
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, path, str(n), mode, str(i), str(of)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(of)
    ]
    for k in kids:  # all loaded and warm before any starts: the rates overlap fully
        assert k.stdout is not None and k.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for k in kids:
        assert k.stdin is not None
        k.stdin.write("go\n")
        k.stdin.flush()
    outs = [json.loads(k.communicate()[0]) for k in kids]
    wall = time.perf_counter() - start
    texts, tokens = sum(o["texts"] for o in outs), sum(o["tokens"] for o in outs)
    return {"texts": texts, "tokens": tokens, "wall": wall, "slowest": max(o["seconds"] for o in outs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--procs", default="1,2,4,8")
    ap.add_argument("--threads", default="1,4,16")
    ap.add_argument("--pools", default="4x1,8x1,2x4,4x2,1x8", help="PxT: P processes, each a pool of T")
    args = ap.parse_args()
    from vecq.worker.bench.models import model_dir

    with tempfile.TemporaryDirectory() as tmp:
        path = str(model_dir("random-bert-base-en", Path(tmp)))
        print(f"cpus {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}; {args.texts} corpus texts")
        for procs in [int(p) for p in args.procs.split(",")]:
            r = run(path, args.texts, "one", procs)
            rate = r["texts"] / r["slowest"]
            print(
                f"{procs} process(es), one text per call: {rate:,.0f} texts/s "
                f"({r['tokens'] / r['slowest'] / 1e6:.2f}M tokens/s; {1e6 * procs / rate:.1f} us/text/core)"
            )
        for threads in [int(t) for t in args.threads.split(",")]:
            r = run(path, args.texts, "batch", 1, threads)
            rate = r["texts"] / r["slowest"]
            mtok = r["tokens"] / r["slowest"] / 1e6
            print(f"batch call, pool of {threads}: {rate:,.0f} texts/s ({mtok:.2f}M tokens/s)")
        for pool in [p for p in args.pools.split(",") if p]:
            procs, threads = (int(x) for x in pool.split("x"))
            r = run(path, args.texts, "batch", procs, threads)
            rate = r["texts"] / r["slowest"]
            mtok = r["tokens"] / r["slowest"] / 1e6
            print(f"{procs} processes, each a pool of {threads}: {rate:,.0f} texts/s ({mtok:.2f}M tokens/s)")


if __name__ == "__main__":
    main()
