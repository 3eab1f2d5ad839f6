"""`vecq bench producer`: what the producer side of a bulk run costs, per text, on its own core.

A bulk corpus goes through `BulkSubmitter` (in this process) and through the whole
`vecq embed --redis` command (a child process), against null-engine workers in processes of
their own on a private `redis-server`, so the producer is measured, not the model.  Reported:
the producer's CPU seconds per text (from `time.process_time` / the child's rusage), the texts/s
one core of producer could therefore sustain, the wall-clock rate (set by the workers on a small
machine), and the bytes Redis received per text.  `--dtype float16` shows what half-size results
save.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click


def _workers(url: str, n: int, logs: Path) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "vecq.worker", "worker", "--backend", "null", "--lanes", "bulk"]
    procs = []
    for i in range(n):
        out = (logs / f"worker-{i}.log").open("ab")
        cmd = [*base, "--redis", url, "--log-level", "WARNING", "--worker-name", f"bench-producer-{i}"]
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
    return procs


def _wait_registered(conn, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    from rq import Worker

    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=conn)) < len(procs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise click.ClickException("a null worker did not start")
        time.sleep(0.1)


def _submitter_run(url: str, texts: list[str], dtype: str, run_id: str) -> tuple[float, float]:
    """(producer CPU seconds, wall seconds) of one BulkSubmitter pass over `texts`."""
    from vecq.producer import Client
    from vecq.producer.bulk import BulkSubmitter

    with Client(url) as client:
        bulk = BulkSubmitter(client, run_id=run_id, chunk_size=256, window=32768, result_dtype=dtype)  # type: ignore[arg-type]
        cpu, wall = time.process_time(), time.perf_counter()
        rows = sum(len(v) for _, v in bulk.run(texts))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert rows == len(texts), f"{rows} vectors for {len(texts)} texts (vecq bug)"
    return cpu, wall


def _embed_run(url: str, corpus: Path, out: Path, dtype: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the `vecq embed --redis` command as a child process."""
    cmd = [sys.executable, "-m", "vecq.worker", "embed", str(corpus), "--out", str(out), "--redis", url]
    cmd += ["--result-dtype", dtype, "--window", "32768"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


@click.command("producer")
@click.option("--texts", "n_texts", type=int, default=100_000, show_default=True, help="Corpus size.")
@click.option("--workers", type=int, default=1, show_default=True, help="Null-engine worker processes.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
def producer_bench(n_texts: int, workers: int, dtype: str) -> None:
    """Producer CPU per text (BulkSubmitter, and `vecq embed --redis`) against null workers."""
    import shutil

    import redis

    from ..embed.server import embedded_redis
    from .corpus import make_corpus
    from .embed import write_txt

    if shutil.which("redis-server") is None:
        raise click.ClickException("vecq bench producer needs redis-server on PATH")
    texts = make_corpus(n_texts, seed=7)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="vecq-bench-producer-") as tmp,
        embedded_redis(binary="redis-server") as url,
    ):
        conn = redis.Redis.from_url(url)
        procs = _workers(url, workers, Path(tmp))
        try:
            _wait_registered(conn, procs)
            _submitter_run(url, texts[:5000], dtype, "warm")
            net = int(conn.info()["total_net_input_bytes"])
            cpu, wall = _submitter_run(url, texts, dtype, "timed")
            per_text = (int(conn.info()["total_net_input_bytes"]) - net) / n_texts
            rows.append(("BulkSubmitter (in process)", cpu, wall, per_text))
            corpus, one = Path(tmp) / "corpus.txt", Path(tmp) / "one.txt"
            write_txt(corpus, texts)
            write_txt(one, texts[:1])
            startup, _ = _embed_run(url, one, Path(tmp) / "one.npy", dtype)  # Python, imports, setup
            cpu, wall = _embed_run(url, corpus, Path(tmp) / "out.npy", dtype)
            rows.append(("vecq embed --redis (whole command)", cpu, wall, float("nan")))
            rows.append((f"  the same, less its {startup:.2f} s start-up", cpu - startup, wall, float("nan")))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
    click.echo(f"\nproducer, {n_texts} texts, {workers} null worker(s), results {dtype}")
    header = ("run", "CPU µs/text", "texts/s per core", "wall texts/s", "Redis in B/text")
    click.echo(f"{header[0]:<38} {header[1]:>12} {header[2]:>17} {header[3]:>13} {header[4]:>16}")
    for name, cpu, wall, per_text in rows:
        per_core, rate = n_texts / cpu, n_texts / wall
        click.echo(
            f"{name:<38} {cpu / n_texts * 1e6:>12.1f} {per_core:>17,.0f} {rate:>13,.0f} {per_text:>16,.0f}"
        )
