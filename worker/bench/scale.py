"""`vecq bench scale`: the same bulk corpus through 1, 2, 4… workers on one Redis, in one run.

What it answers: does throughput add up when workers are added (no load balancer, just more
workers on the same queues), is every job done exactly once, and where does the one Redis start
to cost (its CPU share and the bytes it moves per second at the measured rate).

Each round gets the same corpus, enqueued before its workers start and held back from them until
all are up, so no round is timed through a model load:
1. the jobs are enqueued on the real bulk queue (real origins, so retries go where they should);
2. the queue list is RENAMEd aside; the workers start and register;
3. it is RENAMEd back, and the clock is the span from the first job started to the last job ended,
   read from the jobs themselves.
Workers are separate `vecq worker` processes, as operators run them; `--pin` gives worker i core
i (mod the cores), so "as far as the cores allow" is visible on a small CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import click

TEXTS_PER_JOB = 64


def _enqueue(url: str, model: str, texts: list[str], tag: str) -> list[str]:
    """The corpus as bulk jobs of `TEXTS_PER_JOB` texts, through the producer, 500 per round trip
    (ids `scale-<tag>-<n>`, so every round's jobs are told apart)."""
    from vecq.producer import Client

    ids: list[str] = []
    with Client(url) as client:
        for start in range(0, len(texts), TEXTS_PER_JOB * 500):
            items = [
                (
                    client.request(texts[i : i + TEXTS_PER_JOB], model=model, lane="bulk"),
                    f"scale-{tag}-{i // TEXTS_PER_JOB:08d}",
                )
                for i in range(start, min(len(texts), start + TEXTS_PER_JOB * 500), TEXTS_PER_JOB)
            ]
            ids += [job.id for job in client.enqueuer.enqueue(items)]
    return ids


def _check(conn, ids: list[str], n_texts: int) -> tuple[float, int]:
    """(span seconds, texts in results); fails unless every job finished with exactly one result."""
    from vecq.producer.keys import job_key, result_key
    from vecq.producer.results import decode_entry

    with conn.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hmget(job_key(i), "status", "started_at", "ended_at")
            pipe.xrange(result_key(i))
        rows = pipe.execute()
    meta, entries = rows[0::2], rows[1::2]
    unfinished = sum(1 for r in meta if r[0] != b"finished")
    twice = sum(1 for e in entries if len(e) != 1)
    if unfinished or twice:
        raise click.ClickException(f"{unfinished} jobs unfinished, {twice} with other than one result")
    starts = [datetime.fromisoformat(r[1].decode()).timestamp() for r in meta]
    ends = [datetime.fromisoformat(r[2].decode()).timestamp() for r in meta]
    rows_out = 0
    for job_id, [(entry_id, payload)] in zip(ids, entries, strict=True):
        vectors = decode_entry(job_id, entry_id, payload)
        assert vectors is not None, f"{job_id}: its one result is not a success"
        rows_out += len(vectors)
    if rows_out != n_texts:
        raise click.ClickException(f"results hold {rows_out} vectors for {n_texts} texts")
    return max(ends) - min(starts), rows_out


def _redis_counters(conn) -> tuple[float, int, int]:
    info = conn.info()
    cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return cpu, int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])


def _start_workers(
    n: int, url: str, flags: list[str], *, pin: bool, device: str, logs: Path
) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "vecq.worker", "worker", "--redis", url, "--lanes", "bulk"]
    if device == "gpus":  # as operators run it: one supervisor, one worker per GPU 0..n-1
        cmd = [*base, "--gpus", ",".join(str(i) for i in range(n)), "--worker-name", f"scale-{n}"]
        out = (logs / f"supervisor-{n}.log").open("ab")
        return [
            subprocess.Popen([*cmd, "--log-level", "WARNING", *flags], stdout=out, stderr=subprocess.STDOUT)
        ]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    procs = []
    for i in range(n):
        cmd = [*base, "--device", device, "--worker-name", f"scale-{n}-{i}", "--log-level", "WARNING", *flags]

        def pin_to(core: int | None = cores[i % len(cores)] if pin and cores else None) -> None:
            if core is not None:
                os.sched_setaffinity(0, {core})

        out = (logs / f"worker-{n}-{i}.log").open("ab")
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin_to))
    return procs


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen], progress=None) -> None:
    """Until `predicate()`; fails when a worker exits, at `timeout`, or when `progress()` stalls 60 s."""
    deadline = time.monotonic() + timeout
    last, moved = None, time.monotonic()
    while not predicate():
        if progress is not None:
            now = progress()
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > 60:
                raise click.ClickException(f"no progress for 60 s while {what} (stuck at {now})")
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise click.ClickException(f"a worker exited (code {dead[0].returncode}) while {what}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out after {timeout:.0f}s {what}")
        time.sleep(0.05)


def _round(conn, url: str, n_workers: int, texts: list[str], model: str, flags, opts) -> dict:
    from rq import Worker

    from vecq.producer.keys import BENCH_HELD_KEY, finished_key, queue_key, queue_name

    conn.flushdb()
    ids = _enqueue(url, model, texts, f"w{n_workers}")
    live, held = queue_key(queue_name(model, "bulk")), BENCH_HELD_KEY
    conn.rename(live, held)
    procs = _start_workers(n_workers, url, flags, pin=opts["pin"], device=opts["device"], logs=opts["logs"])
    try:
        _wait(lambda: len(Worker.all(connection=conn)) >= n_workers, opts["load_timeout"], "loading", procs)
        before, t0 = _redis_counters(conn), time.perf_counter()
        conn.rename(held, live)
        _wait(
            lambda: conn.llen(live) == 0 and conn.zcard(finished_key(queue_name(model, "bulk"))) >= len(ids),
            opts["run_timeout"],
            "embedding",
            procs,
        )
        wall = time.perf_counter() - t0
        after = _redis_counters(conn)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(120)
    span, rows = _check(conn, ids, len(texts))
    return {
        "workers": n_workers,
        "texts": rows,
        "jobs": len(ids),
        "seconds": round(span, 3),
        "texts_per_s": round(rows / span, 1),
        "redis_cpu_share": round((after[0] - before[0]) / wall, 3),
        "redis_in_bytes_per_s": round((after[1] - before[1]) / wall),
        "redis_out_bytes_per_s": round((after[2] - before[2]) / wall),
    }


@click.command("scale")
@click.option("--workers", default="1,2", show_default=True, help="Worker counts, one round each.")
@click.option("--texts", "n_texts", type=int, default=20000, show_default=True, help="Corpus size.")
@click.option("--backend", type=click.Choice(["onnx", "torch", "null"]), default="null", show_default=True)
@click.option("--bundle", type=click.Path(file_okay=False), help="Bundle dir (else the default model).")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Every worker's device (cuda:0 shares one GPU); `gpus`: N workers on GPUs 0..N-1 (`--gpus`).",
)
@click.option("--pin", is_flag=True, help="Pin worker i to core i (mod the cores this process may use).")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write rows here."
)
@click.option("--load-timeout", type=float, default=300.0, show_default=True)
@click.option("--run-timeout", type=float, default=3600.0, show_default=True)
def scale(
    workers: str,
    n_texts: int,
    backend: str,
    bundle: str | None,
    device: str,
    pin: bool,
    json_out: Path | None,
    load_timeout: float,
    run_timeout: float,
) -> None:
    """1 vs 2 (vs 4…) workers on one Redis: texts/s, exactly-once check, Redis CPU and bytes/s."""
    import shutil
    import tempfile

    import redis

    from ..embed.server import embedded_redis
    from .corpus import make_corpus

    counts = [int(w) for w in workers.split(",")]
    texts = make_corpus(n_texts, seed=7)
    model = "vecq-scale-bench"  # the workers serve this name, whatever the model's own
    flags = ["--name", model, *(["--bundle", bundle] if bundle else [])]
    if backend != "null" or not bundle:
        flags += ["--backend", backend]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vecq-scale-") as tmp:
        opts = {
            "pin": pin,
            "device": device,
            "logs": Path(tmp),
            "load_timeout": load_timeout,
            "run_timeout": run_timeout,
        }
        binary = "redis-server" if shutil.which("redis-server") else None
        with embedded_redis(binary=binary) as url:
            conn = redis.Redis.from_url(url)
            for n in counts:
                row = _round(conn, url, n, texts, model, flags, opts)
                rows.append(row)
                click.echo(json.dumps(row), err=True)
    base = rows[0]["texts_per_s"] / rows[0]["workers"]
    click.echo(
        f"{'workers':>7} {'texts/s':>9} {'speedup':>8} {'per-worker eff.':>16} "
        f"{'Redis CPU':>10} {'Redis MB/s out':>15}"
    )
    for r in rows:
        speed = r["texts_per_s"] / rows[0]["texts_per_s"]
        eff = r["texts_per_s"] / (base * r["workers"])
        click.echo(
            f"{r['workers']:>7} {r['texts_per_s']:>9.0f} {speed:>7.2f}x {eff:>15.0%} "
            f"{r['redis_cpu_share']:>9.0%} {r['redis_out_bytes_per_s'] / 1e6:>15.1f}"
        )
    click.echo(f"every job finished once; {rows[-1]['texts']} vectors per round")
    if json_out:
        json_out.write_text(
            json.dumps({"backend": backend, "device": device, "pin": pin, "rows": rows}, indent=2)
        )
