"""Probe (issue 14, item 3): where one worker's host time goes during a bulk run.

One `BatchWorker` in this process (main thread under cProfile), the benchmark model's engine
(`--backend torch` on CUDA: the packed engine; `null`: the host path alone), a private Valkey,
and a `BulkSubmitter` producer in a child process.  Prints the bulk rate, the CPU seconds of
every thread of the worker process (from /proc: the engine thread, tokenizing, finishing,
tokenizers' pool), and the main thread's hottest functions.

    python3 benchmarks/probes/worker_host.py [--backend torch|null] [--texts 50000] [--device cuda]
        [--tokenize-processes N] [--max-batch-tokens T]

The null engine packs (a `token_budget` of the packed engine's largest buffer), so the worker
plans token batches for it exactly as for the packed torch engine; a real engine is warmed up
before the profiled run.
"""

from __future__ import annotations

import argparse
import cProfile
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


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--texts", type=int, default=50000)
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--tokenize-processes", type=int, default=None)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        root = model_dir("random-bert-base-en", Path(tmp))
        if args.backend == "null":
            emb = Embedder.load(root, backend="null")
            emb.engine = NullEngine(
                shapes=packed_shapes(emb.spec.max_seq_len), dim=emb.dim, token_budget=32768
            )
        else:
            emb = Embedder.load(root, backend=args.backend, device=args.device, precision="fp16")
            emb.warmup()  # compiles and captures here, not inside the profiled run
        extra = {
            k: v
            for k, v in {
                "prefetch_texts": args.prefetch,
                "tokenize_processes": args.tokenize_processes,
                "max_batch_tokens": args.max_batch_tokens,
            }.items()
            if v is not None
        }
        settings = WorkerSettings(redis_url=url, lanes=("bulk",), name="probe", device=args.device, **extra)
        worker = BatchWorker(emb, settings=settings)  # warms the engine up
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, url, str(args.texts)])
        # Not burst mode: a worker faster than the producer found its queue empty between two
        # windows, left, and the producer waited for results forever (a 10-minute hang on the
        # H200).  The worker serves until the producer has every result back.
        threading.Thread(target=lambda: (producer.wait(), worker.stop()), daemon=True).start()
        before, main_before = process_cpu(), time.thread_time()
        prof = cProfile.Profile()
        start = time.perf_counter()
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
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
