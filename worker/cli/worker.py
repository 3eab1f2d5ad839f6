"""`vecq worker`, `vecq status`, `vecq health`: serving jobs, and reading how serving goes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import error_line
from ..settings import WorkerSettings
from .options import command, fail, flag_of, given, options_from, settings_or_fail, to_args

if TYPE_CHECKING:
    from ..supervisor import Served

#: Flags each `--gpus` child gets of its own instead of the supervisor's.
PER_CHILD = ("device", "metrics_port", "worker_name")
#: The fields that name a model: repeatable flags, one supervised worker per model given.
MODEL_FIELDS = ("bundle", "model")

#: (field, path, name or None): one `--bundle`/`--model` as given.
Source = tuple[str, Path, str | None]


def _model_option(name: str) -> Callable[[Any], Any]:
    """`--bundle`/`--model`, repeatable (None when not given, as every other option)."""
    info = WorkerSettings.model_fields[name]
    return click.option(
        flag_of(name, info),
        name,
        multiple=True,
        metavar="[NAME=]DIR",
        callback=lambda _ctx, _param, value: tuple(value) or None,
        help=info.description,
    )


@command()
@_model_option("bundle")
@_model_option("model")
@options_from(WorkerSettings, skip=MODEL_FIELDS)
@click.option(
    "--gpus", help="'all' or a list like 0,1: one worker process per GPU, supervised (not with --device)."
)
@click.option("--workers-per-gpu", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def worker(
    log_level: str,
    gpus: str | None,
    workers_per_gpu: int,
    bundle: tuple[str, ...] | None,
    model: tuple[str, ...] | None,
    **flags: object,
) -> None:
    """Serve embedding and rerank jobs from Redis in batches (SIGTERM drains and exits 0).

    Several models: repeat --bundle/--model (e.g. an embedder and its reranker on one device):
    one supervised worker process per model (per GPU with --gpus), each with its own engine and
    queues; NAME=DIR names a model's queues (as --name does for one model).
    """
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(log_level.upper())  # rq's worker installs its own INFO handler
    values = given(flags)
    sources = [_source("bundle", raw) for raw in bundle or ()] + [
        _source("model", raw) for raw in model or ()
    ]
    if len(sources) > 1:
        raise SystemExit(_serve_several(sources, gpus, workers_per_gpu, log_level, values))
    for field, path, name in sources:
        values[field] = path
        if name is not None:
            if "name" in values:
                fail(f"--name and --{field} {name}=... both name the model's queues: give one")
            values["name"] = name
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
    settings: WorkerSettings, gpus: str, per_gpu: int, log_level: str, values: dict[str, object],
    models: list[Served] | None = None,
) -> int:  # fmt: skip
    """`--gpus`: the same flags, minus the per-process ones, for one child worker per GPU (and
    per model of `models`, when several were given)."""
    from ..supervisor import Supervisor

    ids = _gpu_ids(gpus, values)
    args = ["--log-level", log_level, *to_args(WorkerSettings, values, skip=PER_CHILD)]
    supervisor = Supervisor.for_gpus(
        ids, args, workers_per_gpu=per_gpu, metrics_port=settings.metrics_port,
        worker_name=settings.worker_name, models=models or (),
    )  # fmt: skip
    names = f": {', '.join(m.name for m in models)}" if models else ""
    click.echo(f"vecq: {len(supervisor.children)} worker(s) on GPU(s) {','.join(ids)}{names}", err=True)
    return supervisor.run()


def _source(field: str, raw: str) -> Source:
    """`DIR`, or `NAME=DIR` naming that model's queues (a path that exists is a path, `=` or not)."""
    name, sep, rest = raw.partition("=")
    if not sep or not name or "/" in name or Path(raw).exists():
        return field, Path(raw), None
    return field, Path(rest), name


def _serve_several(
    sources: list[Source], gpus: str | None, per_gpu: int, log_level: str, values: dict[str, object]
) -> int:
    """Several `--bundle`/`--model`: one supervised single-model worker per model (and GPU, and
    replica), the other flags passed on to each; two models of one name refused before any starts."""
    from ..supervisor import Supervisor, distinct, served

    if "name" in values:
        fail("--name names one model's queues; with several models, name each as --model NAME=DIR")
    settings: WorkerSettings = settings_or_fail(WorkerSettings, values)  # the shared flags, checked once
    try:
        each = [served(f"--{field}", path, name) for field, path, name in sources]
    except Exception as exc:  # a missing dir, an unreadable manifest, a bad name: one line
        fail(error_line(exc))
    try:
        models = distinct(each)
    except ValueError as exc:
        fail(str(exc))
    if gpus is None:
        if per_gpu != 1:
            fail("--workers-per-gpu needs --gpus")
        args = ["--log-level", log_level, *to_args(WorkerSettings, values, skip=PER_CHILD)]
        names = ", ".join(m.name for m in models)
        supervisor = Supervisor.for_device(
            settings.device,
            args,
            models,
            metrics_port=settings.metrics_port,
            worker_name=settings.worker_name,
        )
        click.echo(f"vecq: {len(models)} worker(s) on {settings.device}: {names}", err=True)
        return supervisor.run()
    return _supervise(settings, gpus, per_gpu, log_level, values, models)


def _gpu_ids(gpus: str, values: dict[str, object]) -> list[str]:
    """`--gpus` parsed (and `--device` refused beside it), or one line and exit 2."""
    from ..supervisor import NoGPUs, parse_gpus

    if "device" in values:
        fail("--gpus and --device exclude each other (each GPU's worker gets its own device)")
    try:
        return parse_gpus(gpus)
    except (NoGPUs, ValueError) as exc:
        fail(str(exc))
        raise  # not reached: `fail` exits


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
