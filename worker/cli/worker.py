"""`vecq worker`, `vecq status`, `vecq health`: serving jobs, and reading how serving goes."""

from __future__ import annotations

import click

from ..errors import error_line
from ..settings import WorkerSettings
from .options import command, fail, given, options_from, settings_or_fail, to_args

#: Flags each `--gpus` child gets of its own instead of the supervisor's.
PER_CHILD = ("device", "metrics_port", "worker_name")


@command()
@options_from(WorkerSettings)
@click.option(
    "--gpus", help="'all' or a list like 0,1: one worker process per GPU, supervised (not with --device)."
)
@click.option("--workers-per-gpu", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def worker(log_level: str, gpus: str | None, workers_per_gpu: int, **flags: object) -> None:
    """Serve embedding jobs from Redis in batches (SIGTERM drains and exits 0)."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(log_level.upper())  # rq's worker installs its own INFO handler
    values = given(flags)
    settings: WorkerSettings = settings_or_fail(WorkerSettings, values)
    if gpus is not None:
        raise SystemExit(_supervise(settings, gpus, workers_per_gpu, log_level, values))
    if workers_per_gpu != 1:
        fail("--workers-per-gpu needs --gpus")
    from ..errors import PortBusy
    from ..worker import BatchWorker, NameTaken, WorkerCrashed

    try:
        batch_worker = BatchWorker.from_settings(settings)
    except Exception as exc:  # model, bundle, backend or Redis problems: one line
        fail(error_line(exc))
    try:
        batch_worker.work()
    except (NameTaken, PortBusy) as exc:
        fail(error_line(exc))
    except WorkerCrashed as exc:  # exit 1, not 2: a supervisor restarts a crash, not a usage error
        fail(error_line(exc), code=1)
    _exit_drained()


def _exit_drained() -> None:
    """Exit 0 at once after a drain, skipping the interpreter's teardown: everything is written
    and the worker deregistered, and tearing down torch and the loaded model took 1.2-2.4 s
    after a 0.1 s drain on a loaded 2-core host, which `vecq serve`'s 3 s stop cannot afford."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _supervise(
    settings: WorkerSettings, gpus: str, per_gpu: int, log_level: str, values: dict[str, object]
) -> int:
    """`--gpus`: the same flags, minus the per-process ones, for one child worker per GPU."""
    from ..supervisor import NoGPUs, Supervisor, parse_gpus

    if "device" in values:
        fail("--gpus and --device exclude each other (each GPU's worker gets its own device)")
    try:
        ids = parse_gpus(gpus)
    except (NoGPUs, ValueError) as exc:
        fail(str(exc))
    args = ["--log-level", log_level, *to_args(WorkerSettings, values, skip=PER_CHILD)]
    supervisor = Supervisor.for_gpus(
        ids,
        args,
        workers_per_gpu=per_gpu,
        metrics_port=settings.metrics_port,
        worker_name=settings.worker_name,
    )
    click.echo(f"vecq: {len(supervisor.children)} worker(s) on GPU(s) {','.join(ids)}", err=True)
    return supervisor.run()


def _redis_url(flag: str | None) -> str:
    return flag or WorkerSettings().redis_url


@command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--sample", type=float, default=1.0, show_default=True, help="Seconds to measure throughput.")
def status(redis_url: str | None, sample: float) -> None:
    """Queues (jobs waiting, taken, started, finished, failed), workers, in-flight, throughput."""
    import redis

    from vecq.producer.connection import mask_url, open_sync
    from vecq.producer.errors import RedisUnavailable

    from ..status import gather, render

    url = _redis_url(redis_url)
    try:
        report = gather(open_sync(url), sample_s=sample)
    except RedisUnavailable as exc:  # a bad URL: the message names it, masked
        fail(str(exc))
    except (redis.RedisError, ValueError) as exc:
        fail(f"{mask_url(url)}: {error_line(exc)}")
    click.echo(render(report, url=mask_url(url)))


@command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--worker-name", help="This worker's health (default: any vecq worker).")
@click.option("--name", help="Only workers of this model.")
@click.option(
    "--this-host", is_flag=True, help="Only workers on this host (a container's probe: its own workers)."
)
def health(redis_url: str | None, worker_name: str | None, name: str | None, this_host: bool) -> None:
    """Exit 0 if the worker (or any vecq worker) has a live health key, else 1."""
    import socket

    import redis

    from vecq.producer.connection import mask_url, open_sync
    from vecq.producer.errors import RedisUnavailable

    from ..status import check_health

    url = _redis_url(redis_url)
    try:
        host = socket.gethostname() if this_host else None
        ok, message = check_health(open_sync(url), worker=worker_name, model=name, host=host)
    except (redis.RedisError, RedisUnavailable, ValueError) as exc:
        detail = str(exc) if isinstance(exc, RedisUnavailable) else f"{mask_url(url)}: {error_line(exc)}"
        fail(detail, code=1)
    click.echo(message)
    raise SystemExit(0 if ok else 1)
