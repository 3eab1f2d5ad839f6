"""`vecq bench queue`: the queue path alone, against stock rq on the same jobs.

`queue` runs against a private `redis-server` it starts on a free port (so it never touches real
data), with the null engine, so what it measures is vecq's own overhead: take, validate, plan,
write back.  The same jobs go through a stock `rq worker -w rq.worker.SimpleWorker` in the same
run, for comparison.  Rates are jobs (or texts) over the span from the first job started to the
last job ended, read from the jobs themselves, the same way for both workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime

import click


def _enqueue(url: str, n_jobs: int, texts_per_job: int, tag: str) -> list[str]:
    """`n_jobs` jobs of the default model on the interactive lane, through the producer, 1,000
    per round trip."""
    from vecq.producer import Client
    from vecq.producer.enqueue import new_job_id

    ids: list[str] = []
    with Client(url) as client:
        for start in range(0, n_jobs, 1000):
            items = [
                (
                    client.request(
                        [f"{tag} job {j} text {k} of a short sentence" for k in range(texts_per_job)]
                    ),
                    new_job_id(),
                )
                for j in range(start, min(n_jobs, start + 1000))
            ]
            ids += [job.id for job in client.enqueuer.enqueue(items)]
    return ids


def _span(conn, ids: list[str]) -> float:
    """Seconds from the first job started to the last job ended (all must have finished)."""
    from vecq.producer.keys import job_key

    with conn.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hmget(job_key(i), "status", "started_at", "ended_at")
        rows = pipe.execute()
    bad = [r[0] for r in rows if r[0] != b"finished"]
    if bad:
        raise click.ClickException(f"{len(bad)} of {len(ids)} jobs did not finish")
    starts = [datetime.fromisoformat(r[1].decode()).timestamp() for r in rows]
    ends = [datetime.fromisoformat(r[2].decode()).timestamp() for r in rows]
    return max(ends) - min(starts)


def _run_vecq(url: str, *, prefetch: int) -> float:
    from ..settings import WorkerSettings
    from ..worker import BatchWorker

    worker = BatchWorker.from_settings(
        WorkerSettings(redis_url=url, backend="null", burst=True, prefetch_texts=prefetch)
    )
    t0 = time.perf_counter()
    worker.work()
    wall = time.perf_counter() - t0
    worker.connection.close()
    return wall


def run_stock_rq(url: str, queue: str, *, serializer: str | None = None) -> float:
    """Seconds a stock `rq worker -w rq.worker.SimpleWorker --burst` takes to drain `queue`."""
    rq_bin = shutil.which("rq") or sys.exit("vecq bench: the rq command is not on PATH")
    cmd = [rq_bin, "worker", "-w", "rq.worker.SimpleWorker", "--burst", "-u", url]
    cmd += ["--serializer", serializer] if serializer else []
    cmd += ["--logging_level", "WARNING", queue]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "VECQ_BACKEND": "null"})
    return time.perf_counter() - t0


def _run_stock(url: str) -> float:
    from vecq.producer.contract import DEFAULT_MODEL
    from vecq.producer.keys import queue_name
    from vecq.producer.serializer import SERIALIZER_PATH

    return run_stock_rq(url, queue_name(DEFAULT_MODEL, "interactive"), serializer=SERIALIZER_PATH)


@click.command("queue")
@click.option("--jobs", "n_jobs", type=int, default=20000, show_default=True, help="1-text jobs for vecq.")
@click.option("--stock-jobs", type=int, default=2000, show_default=True, help="1-text jobs for stock rq.")
@click.option("--batch-jobs", type=int, default=500, show_default=True, help="64-text jobs for vecq.")
@click.option("--prefetch-texts", type=int, default=4096, show_default=True)
def queue_bench(n_jobs: int, stock_jobs: int, batch_jobs: int, prefetch_texts: int) -> None:
    """Queue overhead with the null engine: vecq vs stock rq (1-text jobs), and 64-text jobs."""
    import redis

    from ..embed.server import embedded_redis

    if shutil.which("redis-server") is None:
        raise click.ClickException("vecq bench queue needs redis-server on PATH")
    with embedded_redis(binary="redis-server") as url:  # the server DESIGN.md's stock-rq figure used
        conn = redis.Redis.from_url(url)
        try:
            rows = []
            ids = _enqueue(url, n_jobs, 1, "vecq")
            wall = _run_vecq(url, prefetch=prefetch_texts)
            rows.append(("vecq BatchWorker, 1-text jobs", n_jobs, n_jobs / _span(conn, ids), n_jobs / wall))
            conn.flushdb()
            ids = _enqueue(url, stock_jobs, 1, "stock")
            wall = _run_stock(url)
            rows.append(
                (
                    "stock rq SimpleWorker, 1-text jobs",
                    stock_jobs,
                    stock_jobs / _span(conn, ids),
                    stock_jobs / wall,
                )
            )
            conn.flushdb()
            ids = _enqueue(url, batch_jobs, 64, "bulk")
            wall = _run_vecq(url, prefetch=prefetch_texts)
            span = _span(conn, ids)
            rows.append(("vecq BatchWorker, 64-text jobs", batch_jobs, batch_jobs / span, batch_jobs / wall))
        finally:
            conn.close()
    click.echo(f"{'run':<38} {'jobs':>7} {'jobs/s':>9} {'jobs/s (wall)':>14}")
    for name, n, rate, wall_rate in rows:
        click.echo(f"{name:<38} {n:>7} {rate:>9.0f} {wall_rate:>14.0f}")
    click.echo(f"64-text jobs: {rows[2][2] * 64:.0f} texts/s")
    click.echo(f"vecq / stock rq (1-text jobs): {rows[0][2] / rows[1][2]:.1f}x")
