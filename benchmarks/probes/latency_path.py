"""Probe (issue 14, interactive latency): where a lone 1-text request's milliseconds go.

One `BatchWorker` in this process (lanes interactive and bulk, as `vecq worker` serves), the
null packing engine by default (the host path alone) or the benchmark model's torch engine on
CUDA, a private Valkey, and a client in a child process sending 1-text interactive requests one
after another.  The worker's steps are stamped with the wall clock (one machine: the client's
stamps compare), and the report gives the median time from each stamp to the next:

    client sends → take returns → tokenized → offered to the engine → engine starts →
    engine done → collected → handed to the finisher → written → client has the vectors

    python3 benchmarks/probes/latency_path.py [--backend null|torch] [--device cuda] [--requests 300]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vecq.engines import Embedder
from vecq.engines.backends.null import NullEngine
from vecq.engines.backends.torch_packed import packed_shapes
from vecq.worker.bench.models import model_dir
from vecq.worker.embed.server import embedded_redis
from vecq.worker.settings import WorkerSettings
from vecq.worker.worker import BatchWorker

CLIENT = """
import json, sys, time
from vecq.producer import Client
url, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Client(url) as c:
    for i in range(20):
        c.embed([f"warm up {i}"], model=model, lane="interactive", timeout=30)
    for i in range(n):
        sent = time.time()
        c.embed([f"a short query number {i}"], model=model, lane="interactive", timeout=30)
        print(json.dumps({"sent": sent, "got": time.time()}), flush=True)
"""

STEPS = ["take", "tokenized", "offered", "engine start", "engine done", "collected", "to finisher", "written"]


class Stamps:
    """Wall-clock stamps of each request's steps, keyed by the order requests were taken."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def mark(self, step: str) -> None:
        if self.rows:
            self.rows[-1].setdefault(step, time.time())

    def wrap(self, obj: object, name: str, step: str, *, new: bool = False, before: bool = False) -> None:
        inner = getattr(obj, name)

        def stamped(*args, **kwargs):
            if before:
                self.mark(step)
            out = inner(*args, **kwargs)
            if new and out:
                self.rows.append({step: time.time()})
            elif not before and not new:
                self.mark(step)
            return out

        setattr(obj, name, stamped)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="null")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="cProfile the main thread (adds its overhead)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        root = model_dir("random-bert-base-en", Path(tmp))
        if args.backend == "null":
            emb = Embedder.load(root, backend="null")
            shapes = packed_shapes(emb.spec.max_seq_len)
            emb.engine = NullEngine(shapes=shapes, dim=emb.dim, token_budget=32768)
            device = "cpu"
        else:
            emb = Embedder.load(root, backend=args.backend, device=args.device, precision="fp16")
            emb.warmup()
            device = args.device
        settings = WorkerSettings(redis_url=url, lanes=("interactive", "bulk"), name="probe", device=device)
        worker = BatchWorker(emb, settings=settings)
        s, stamps = worker.serving, Stamps()
        stamps.wrap(s.intake, "take", "take", new=True)
        stamps.wrap(s.tokenizing, "ready", "tokenized", before=True)
        stamps.wrap(s.runner, "offer", "offered")
        stamps.wrap(s.runner, "_start", "engine start", before=True)
        stamps.wrap(s.runner, "_collect", "engine done")
        stamps.wrap(s, "_on_done", "collected", before=True)
        stamps.wrap(s.finisher, "submit", "to finisher", before=True)
        stamps.wrap(s.finisher.store, "finish", "written")
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, url, "probe", str(args.requests)],
            stdout=subprocess.PIPE,
            text=True,
        )
        replies: list[dict[str, float]] = []

        def read_client() -> None:
            assert client.stdout is not None
            replies.extend(json.loads(line) for line in client.stdout)
            client.wait()
            worker.stop()

        threading.Thread(target=read_client, daemon=True).start()
        prof = cProfile.Profile()
        if args.profile:
            prof.enable()
        worker.work(burst=False, with_scheduler=False)
        prof.disable()
    rows = stamps.rows[-len(replies) :]
    print(f"{len(replies)} requests, {args.backend} engine; median ms from each step to the next:")
    total = np.array([r["got"] - r["sent"] for r in replies]) * 1000
    prev = "client sends"
    for step in [*STEPS, "client has it"]:
        gaps = []
        for reply, row in zip(replies, rows, strict=False):
            times = {"client sends": reply["sent"], "client has it": reply["got"], **row}
            if prev in times and step in times:
                gaps.append((times[step] - times[prev]) * 1000)
        if gaps:
            print(f"  {prev:>14} → {step:<14} {np.median(gaps):7.3f} ms")
            prev = step
    print(f"  end to end: p50 {np.percentile(total, 50):.2f} ms, p99 {np.percentile(total, 99):.2f} ms")
    if args.profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
