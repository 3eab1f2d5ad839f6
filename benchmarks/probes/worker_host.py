"""Probe (issue 14, item 3): where one worker's host time goes during a bulk run.

One `BatchWorker` in this process (main thread under cProfile), the benchmark model's engine
(`--backend torch` on CUDA: the packed engine; `null`: the host path alone), a private Valkey,
and a `BulkSubmitter` producer in a child process.  Prints the bulk rate, the CPU seconds of
every thread of the worker process (from /proc: the engine thread, tokenizing, finishing,
tokenizers' pool), the main thread's hottest functions, and where the engine waited: a thread
samples the worker's state every millisecond and sorts each sample into engine busy, or idle
because texts were tokenizing / planned but not due / held at the prefetch cap / not there.

    python3 benchmarks/probes/worker_host.py [--backend torch|null] [--texts 50000] [--device cuda]
        [--tokenize-processes N] [--max-batch-tokens T]

The null engine packs (a `token_budget` of the packed engine's largest buffer), so the worker
plans token batches for it exactly as for the packed torch engine; a real engine is warmed up
before the profiled run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vecq.engines import Embedder
from vecq.engines.backends.null import NullEngine
from vecq.engines.backends.torch_packed import packed_shapes
from vecq.worker.bench.models import model_dir
from vecq.worker.embed.server import embedded_redis
from vecq.worker.settings import WorkerSettings
from vecq.worker.worker import BatchWorker

PRODUCER = """
import sys, time
from vecq.producer import Client
from vecq.producer.bulk import BulkSubmitter
from vecq.worker.bench.corpus import make_corpus
texts = make_corpus(int(sys.argv[2]), seed=7)
time.sleep(1.0)
with Client(sys.argv[1]) as c:
    s = BulkSubmitter(c, run_id='probe', model='probe', chunk_size=256, window=32768)
    t = time.perf_counter(); n = sum(len(v) for _, v in s.run(texts)); el = time.perf_counter() - t
print(f'bulk: {n} texts in {el:.2f} s = {n / el:,.0f} texts/s', flush=True)
"""


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads (by Python thread name; tokenizers' pool and
    other native threads by id) and of its live children (by pid)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}

    def add(name: str, stat_path: Path) -> None:
        with contextlib.suppress(OSError):
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick

    for task in Path("/proc/self/task").iterdir():
        add(names.get(int(task.name), f"native thread {task.name}"), task / "stat")
        with contextlib.suppress(OSError):
            for pid in (task / "children").read_text().split():
                add(f"child process {pid}", Path(f"/proc/{pid}/stat"))
    return out


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StateSampler:
    """Samples `serving`'s queues every `period` s (a read of a few ints under the GIL)."""

    def __init__(self, serving, period: float = 0.001) -> None:
        self.serving, self.period = serving, period
        self.counts: dict[str, int] = {}
        self.counting = False  # from the first text held until `done()`: the bulk run only
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-sampler", daemon=True)

    def __enter__(self) -> StateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        s = self.serving
        while not self._stop.wait(self.period):
            held = s.jobs.texts + s.finisher.texts_in_flight
            self.counting = (self.counting or held > 0) and not self._done
            if not self.counting:
                continue
            if s.runner.in_flight:
                state = (
                    "engine busy, next batch waiting" if not s.runner.slot_free else "engine busy, slot empty"
                )
            elif s.tokenizing.texts:
                state = "engine idle: texts tokenizing"
            elif s.planner.pending:
                state = "engine idle: planned texts not cut yet"
            elif held >= s.policy.prefetch.texts:
                state = "engine idle: at the prefetch cap (writing back)"
            elif held:
                state = "engine idle: texts held, being written"
            else:
                state = "engine idle: nothing held (Redis/producer)"
            self.counts[state] = self.counts.get(state, 0) + 1

    def done(self) -> None:
        self._done = True

    def report(self) -> None:
        total = sum(self.counts.values()) or 1
        for state, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            print(f"  {100 * n / total:5.1f} %  {state}")


class WallTimes:
    """Wall seconds spent in chosen methods (wrapped on the instance), per thread that ran them;
    nested calls count in both."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: object, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                key = f"{threading.current_thread().name}: {label}"
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
                self.calls[key] = self.calls.get(key, 0) + 1

        setattr(obj, name, timed)

    def report(self, wall: float) -> None:
        for key, sec in sorted(self.seconds.items()):
            print(f"  {sec:6.2f} s ({100 * sec / wall:5.1f} %) in {self.calls[key]:6d} calls  {key}")


def instrument(serving) -> WallTimes:
    times = WallTimes()
    for name in ("_take", "_collect", "_write", "_plan_tokenized", "_feed", "_wait"):
        times.wrap(serving, name, f"Serving.{name}")
    times.wrap(serving.intake, "take", "Intake.take (Redis)")
    times.wrap(serving.tokenizing, "submit", "Tokenizing.submit")
    times.wrap(serving.runner, "_start", "EngineRunner._start (inputs, launch)")
    times.wrap(serving.runner, "_collect", "EngineRunner._collect (device sync)")
    times.wrap(serving.runner, "_next", "EngineRunner._next (wait for a batch)")
    times.wrap(serving.finisher.store, "finish", "JobStore.finish (Redis)")
    return times


def bench_embedder(tmp: Path, backend: str, device: str) -> Embedder:
    """The benchmark model on `backend`: the null engine made to pack like the packed torch
    engine (same shapes, a 32,768-token budget), or a real fp16 engine, warmed up here so that
    compiles and graph captures stay out of what is measured."""
    root = model_dir("random-bert-base-en", tmp)
    if backend == "null":
        emb = Embedder.load(root, backend="null")
        emb.engine = NullEngine(shapes=packed_shapes(emb.spec.max_seq_len), dim=emb.dim, token_budget=32768)
        return emb
    emb = Embedder.load(root, backend=backend, device=device, precision="fp16")
    emb.warmup()
    return emb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--texts", type=int, default=50000)
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--tokenize-processes", type=int, default=None)
    ap.add_argument("--tokenize-threads", type=int, default=None)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--gil-switch-ms", type=float, default=None)
    ap.add_argument("--lanes", default="bulk", help="vecq worker's: interactive,bulk")
    ap.add_argument("--no-profile", action="store_true", help="skip cProfile (its overhead)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        emb = bench_embedder(Path(tmp), args.backend, args.device)
        extra = {
            k: v
            for k, v in {
                "prefetch_texts": args.prefetch,
                "tokenize_processes": args.tokenize_processes,
                "tokenize_threads": args.tokenize_threads,
                "max_batch_tokens": args.max_batch_tokens,
                "gil_switch_ms": args.gil_switch_ms,
            }.items()
            if v is not None
        }
        settings = WorkerSettings(redis_url=url, lanes=args.lanes, name="probe", device=args.device, **extra)
        worker = BatchWorker(emb, settings=settings)  # warms the engine up
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, url, str(args.texts)])
        # Not burst mode: a worker faster than the producer found its queue empty between two
        # windows, left, and the producer waited for results forever (a 10-minute hang on the
        # H200).  The worker serves until the producer has every result back.
        at_end: dict[str, float] = {}

        times = instrument(worker.serving)
        run_wall: list[float] = []

        def stop_when_done() -> None:
            producer.wait()
            sampler.done()
            run_wall.append(time.perf_counter() - start)
            at_end.update(thread_cpu())  # before the worker's threads and children end
            worker.stop()

        threads_before = thread_cpu()
        sampler = StateSampler(worker.serving)
        before, main_before = process_cpu(), time.thread_time()
        prof = cProfile.Profile()
        start = time.perf_counter()
        threading.Thread(target=stop_when_done, daemon=True).start()
        with sampler:
            if not args.no_profile:
                prof.enable()
            worker.work(burst=False, with_scheduler=False)
            prof.disable()
        wall = time.perf_counter() - start
        main_cpu, total_cpu = time.thread_time() - main_before, process_cpu() - before
        producer.wait()
    print(
        f"worker wall {wall:.2f} s; CPU {total_cpu:.2f} s in all threads, {main_cpu:.2f} s on the main "
        f"thread (cProfile's overhead included)"
    )
    print("CPU seconds by thread (and tokenizer child) during the run:")
    for name, cpu in sorted(at_end.items(), key=lambda kv: -kv[1]):
        used = cpu - threads_before.get(name, 0.0)
        if used >= 0.01:
            print(f"  {used:6.2f}  {name}")
    print("worker state during the bulk run, sampled every ms:")
    sampler.report()
    print("wall time in the worker's steps (from the worker's start to the producer's end):")
    times.report(run_wall[0] if run_wall else wall)
    if not args.no_profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
