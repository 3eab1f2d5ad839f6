"""Probe (issue 14, interactive latency): where a lone 1-text request's milliseconds go.

One `BatchWorker` in this process (lanes interactive and bulk, as `vecq worker` serves), the
null packing engine by default (the host path alone) or the benchmark model's torch engine on
CUDA, a private Valkey, and a client in a child process sending 1-text interactive requests one
after another.  The worker's steps are stamped with the wall clock (one machine: the client's
stamps compare), and the report gives the median time from each stamp to the next:

    client sends → take returns → tokenized → offered to the engine → engine starts →
    launched (engine.start returned) → device done (its result() returned) → engine done →
    collected → handed to the finisher → written → client has the vectors

    python3 benchmarks/probes/latency_path.py [--backend null|torch] [--device cuda] [--requests 300]
        [--under-bulk] [--profile] [--gil-switch-ms MS]

`--profile` sorts by PROFILE_SORT (default tottime) and prints PROFILE_ROWS (30) rows.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from worker_host import bench_embedder  # this folder's probe: the same model and engines

from vecq.worker.bench.pipeline import bulk_busy
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

STEPS = ["take", "tokenized", "offered", "engine start", "launched", "device done", "engine done",
         "collected", "to finisher", "written"]  # fmt: skip


class Stamps:
    """Wall-clock stamps of each interactive request's steps, in the order they were taken (the
    client sends one at a time); bulk work passing the same steps is not stamped."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.job_id: str | None = None  # the interactive job now in the worker
        #: per engine.start: (the engine thread's CPU seconds, wall seconds) -- the rest it waited
        self.launch_cpu: list[tuple[float, float]] = []

    def mark(self, step: str) -> None:
        if self.rows:
            self.rows[-1].setdefault(step, time.time())

    def wrap(self, obj: object, name: str, step: str, concerns, *, after: bool = True) -> None:
        """Stamp `step` when `obj.name` is called (`after`: when it returns) with arguments, or
        a result, that `concerns(args, out)` says hold the interactive job."""
        inner = getattr(obj, name)

        def stamped(*args, **kwargs):
            if not after and concerns(args, None):
                self.mark(step)
            out = inner(*args, **kwargs)
            if after and concerns(args, out):
                self.mark(step)
            return out

        setattr(obj, name, stamped)

    def on_take(self, taken) -> None:
        for t in taken:
            if t.queue_index == 0:  # the interactive lane's queue
                self.job_id = t.job_id
                self.rows.append({"take": time.time()})


def instrument(serving, stamps: Stamps) -> None:
    s = serving
    take = s.intake.take

    def taken(*args, **kwargs):
        out = take(*args, **kwargs)
        stamps.on_take(out)
        return out

    s.intake.take = taken

    def mine(items) -> bool:
        return any(getattr(i, "job_id", None) == stamps.job_id for i in items)

    def plan(args, _out) -> bool:
        return bool(args) and bool(getattr(args[0], "interactive", False))

    stamps.wrap(
        s.planner, "add_encoded", "tokenized", lambda a, _: mine(j.owner for j, _t in a[0].jobs), after=False
    )
    stamps.wrap(s.runner, "offer", "offered", lambda a, o: o and plan(a, o))
    stamps.wrap(s.runner, "offer_first", "offered", lambda a, o: o[0] and plan(a, o))
    stamps.wrap(s.runner, "_start", "engine start", plan, after=False)
    stamps.wrap(s.runner, "_collect", "engine done", lambda a, _: plan([a[0].planned], None))
    if hasattr(s.runner.engine, "start"):  # idle runs only: a bulk batch would stamp these too
        start = s.runner.engine.start

        def launched(batch):  # type: ignore[no-untyped-def]
            cpu, wall = time.thread_time(), time.perf_counter()
            out = start(batch)
            stamps.mark("launched")
            stamps.launch_cpu.append((time.thread_time() - cpu, time.perf_counter() - wall))
            result = out.result

            def waited():  # type: ignore[no-untyped-def]
                vectors = result()
                stamps.mark("device done")
                return vectors

            out.result = waited
            return out

        s.runner.engine.start = launched
    stamps.wrap(s, "_on_done", "collected", lambda a, _: plan([a[0].planned], None), after=False)
    stamps.wrap(s.finisher, "submit", "to finisher", lambda a, _: mine(i for i, _v in a[0]), after=False)
    stamps.wrap(s.finisher.store, "finish", "written", lambda a, _: mine(r.running for r in a[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="null")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="cProfile the main thread (adds its overhead)")
    ap.add_argument("--under-bulk", action="store_true", help="while a bulk producer keeps the worker busy")
    ap.add_argument("--gil-switch-ms", type=float, default=0.5, help="the worker's gil_switch_ms")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        emb = bench_embedder(Path(tmp), args.backend, args.device)
        device = "cpu" if args.backend == "null" else args.device
        settings = WorkerSettings(
            redis_url=url,
            lanes=("interactive", "bulk"),
            name="probe",
            device=device,
            gil_switch_ms=args.gil_switch_ms,
        )
        worker = BatchWorker(emb, settings=settings)
        stamps = Stamps()
        instrument(worker.serving, stamps)
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

        prof = cProfile.Profile()
        load = bulk_busy(url, "probe", ["x"] * 20000) if args.under_bulk else contextlib.nullcontext()
        with load:  # a bulk producer in its own process: its jobs wait in Redis from now on
            threading.Thread(target=read_client, daemon=True).start()
            if args.profile:
                prof.enable()
            worker.work(burst=False, with_scheduler=False)
            prof.disable()
    rows = stamps.rows[-len(replies) :]
    under = ", under bulk" if args.under_bulk else ""
    print(f"{len(replies)} requests, {args.backend} engine{under}; ms from each step to the next, p50 / p99:")
    total = np.array([r["got"] - r["sent"] for r in replies]) * 1000
    prev = "client sends"
    for step in [*STEPS, "client has it"]:
        gaps = []
        for reply, row in zip(replies, rows, strict=False):
            times = {"client sends": reply["sent"], "client has it": reply["got"], **row}
            if prev in times and step in times:
                gaps.append((times[step] - times[prev]) * 1000)
        if gaps:
            p50, p99 = np.percentile(gaps, 50), np.percentile(gaps, 99)
            print(f"  {prev:>14} → {step:<14} {p50:7.3f} / {p99:7.3f} ms")
            prev = step
    print(f"  end to end: p50 {np.percentile(total, 50):.2f} ms, p99 {np.percentile(total, 99):.2f} ms")
    if stamps.launch_cpu:
        cpu, wall = (np.array(x) * 1e3 for x in zip(*stamps.launch_cpu, strict=True))
        print(
            f"  engine.start: p50 {np.median(wall):.3f} ms wall, "
            f"{np.median(cpu):.3f} ms of the engine thread's CPU"
        )
    if args.profile:
        order, rows = os.environ.get("PROFILE_SORT", "tottime"), int(os.environ.get("PROFILE_ROWS", "30"))
        pstats.Stats(prof).sort_stats(order).print_stats(rows)


if __name__ == "__main__":
    main()
