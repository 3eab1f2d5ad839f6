"""`vecq serve`: Redis, workers and the gateway on one machine, in one command (`worker/stack.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..settings import WorkerSettings
from .gateway import gateway as gateway_command
from .options import fail, given, options_from, settings_or_fail, to_args

if TYPE_CHECKING:
    from vecq.producer.gateway import GatewaySettings

#: The worker settings `vecq serve` takes (what to serve); the rest keep their defaults or env.
WORKER_FIELDS = ("bundle", "model", "backend", "precision", "name", "threads")
#: The gateway's own options, but these (the Redis is the stack's, the log level is shared).
NOT_FROM_GATEWAY = ("redis_url", "log_level")


def _gateway_options(command: click.Command) -> click.Command:
    """The gateway's options (keys, limits, host, port, ...) as `vecq gateway` declares them."""
    command.params.extend(p for p in gateway_command.params if p.name not in NOT_FROM_GATEWAY)
    return command


@_gateway_options
@click.command()
@click.option("--redis", "redis_url", help="Use this Redis (default: an embedded Valkey of this run).")
@options_from(WorkerSettings, skip=[f for f in WorkerSettings.model_fields if f not in WORKER_FIELDS])
@click.option(
    "--gpus", default="auto", show_default=True,
    help="'auto' (every visible GPU, else one CPU worker), 'none' (one CPU worker), 'all' or e.g. 0,1.",
)  # fmt: skip
@click.option("--workers-per-gpu", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--log-level", default="WARNING", show_default=True, help="Logging level of every process.")
def serve(redis_url: str | None, gpus: str, workers_per_gpu: int, log_level: str, **flags: object) -> None:
    """Serve POST /v1/embeddings on this machine: Redis, workers and the gateway in one command.

    An embedded Valkey (or --redis), one worker per GPU or one CPU worker (default model:
    all-MiniLM-L6-v2), and the OpenAI-compatible gateway on 127.0.0.1:8000 with its keys and
    limits.  Ctrl-C or SIGTERM stops all of it: the gateway, the workers (drained), then Redis.
    """
    import logging

    try:  # the stack reads the gateway's settings and routes: without the extra, one line
        from ..stack import Ready, ServePlan, Stack, StackError
    except ImportError as exc:
        fail(f"vecq serve needs the gateway extra (pip install 'vecq[gateway]'): {exc}")

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker_values = given({k: v for k, v in flags.items() if k in WORKER_FIELDS})
    settings: WorkerSettings = settings_or_fail(WorkerSettings, worker_values)
    plan = ServePlan(
        gateway=_gateway_settings({k: v for k, v in flags.items() if k not in WORKER_FIELDS}),
        redis_url=redis_url,
        worker_args=tuple(to_args(WorkerSettings, worker_values)),
        gpus=_gpus(gpus),
        workers_per_gpu=workers_per_gpu,
        model_path=settings.model_path,
        log_level=log_level,
    )

    def announce(ready: Ready) -> None:
        where = f"{ready.workers} GPU worker(s)" if plan.gpus else "1 CPU worker"
        click.echo(f"vecq serve: {ready.url} serves {ready.model} ({where}, {ready.redis}); Ctrl-C stops")

    try:
        code = Stack(plan, announce=announce).run()
    except KeyboardInterrupt:  # before the supervisor took the signals, or a second Ctrl-C after
        code = 0
    except (StackError, OSError, RuntimeError) as exc:  # a taken port, no embedded server
        fail(str(exc))
    if code == 2:
        fail("a worker could not start (its error is above)")
    click.echo("vecq serve: stopped" if code == 0 else "vecq serve: stopped; a process did not stop cleanly")
    raise SystemExit(code)


def _gpus(spec: str) -> tuple[str, ...]:
    """The GPUs to serve on: none means one CPU worker."""
    from ..supervisor import NoGPUs, parse_gpus, visible_gpus

    choice = spec.strip().lower()
    if choice == "none":
        return ()
    if choice == "auto":
        try:
            return tuple(visible_gpus())
        except NoGPUs:
            return ()
    ids: list[str] = []
    try:
        ids = parse_gpus(spec)
    except (NoGPUs, ValueError) as exc:
        fail(str(exc))
    return tuple(ids)


def _gateway_settings(flags: dict[str, object]) -> GatewaySettings:
    """The gateway's settings from its flags, checked here so a bad one fails before anything starts."""
    from pydantic import ValidationError

    from vecq.producer.contract import one_line

    try:
        from vecq.producer.gateway import GatewaySettings
    except ImportError as exc:
        fail(f"vecq serve needs the gateway extra (pip install 'vecq[gateway]'): {exc}")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in given(flags).items() if v != ()}
    try:
        settings = GatewaySettings(**values)
        settings.keys()  # an unreadable --api-key-file: one line now, not in the gateway's log
    except ValidationError as exc:
        fail(one_line(exc, unnamed="settings"))
    except ValueError as exc:
        fail(str(exc))
    return settings
