"""`vecq gateway`: the OpenAI-compatible HTTP front (needs vecq[gateway], never torch)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .options import command, fail


@command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; env VECQ_HOST).")
@click.option("--port", type=int, help="Port to listen on (default 8000; env VECQ_PORT).")
@click.option("--timeout", type=float, help="Seconds a request waits for its vectors before a 504.")
@click.option(
    "--max-queued-texts", type=int,
    help="Answer 429 when a model's queues hold more texts (default: sized from the workers' rate).",
)  # fmt: skip
@click.option(
    "--queued-texts-floor", type=int,
    help="Least queued-texts limit sized from the workers' rate (default 1024; also with no worker).",
)  # fmt: skip
@click.option(
    "--tokenizer", "tokenizers", multiple=True, metavar="NAME=PATH",
    help="Model NAME's tokenizer (a model dir or bundle with tokenizer.json), for usage counts; repeatable.",
)  # fmt: skip
@click.option(
    "--api-key", "api_keys", multiple=True, metavar="KEY",
    help="A Bearer key requests must carry; repeatable (env VECQ_API_KEYS, comma-separated).",
)  # fmt: skip
@click.option(
    "--api-key-file", type=click.Path(path_type=Path), help="A file of API keys, one per line (a Secret)."
)
@click.option(
    "--models", help="Models to queue requests for even with no worker up (comma-separated; others need one)."
)
@click.option(
    "--max-in-flight", type=int, help="Requests queued or waiting at once (default 4096); more: 429."
)
@click.option("--max-body-bytes", type=int, help="Largest request body (default 16 MiB); larger: 413.")
@click.option(
    "--processes", type=click.IntRange(1, 64),
    help="Gateway processes on the port (default 1; one is about one core's worth of requests).",
)  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def gateway(log_level: str, tokenizers: tuple[str, ...], api_keys: tuple[str, ...], **flags: object) -> None:
    """Serve an OpenAI-compatible POST /v1/embeddings, /health and /metrics (needs vecq[gateway])."""
    import logging

    from pydantic import ValidationError

    from vecq.producer.contract import one_line

    try:
        import uvicorn

        from vecq.producer.gateway import GatewaySettings, create_app
    except ImportError as exc:
        fail(f"vecq gateway needs the gateway extra (pip install 'vecq[gateway]'): {exc}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {k: v for k, v in flags.items() if v is not None}
    if tokenizers:
        given["tokenizers"] = list(tokenizers)
    if api_keys:
        given["api_keys"] = list(api_keys)
    try:
        settings = GatewaySettings(**given)
        app = create_app(settings)
    except ValidationError as exc:
        fail(one_line(exc, unnamed="settings"))
    except ValueError as exc:  # a tokenizer dir without tokenizer.json, an unreadable config
        fail(str(exc))
    if settings.processes == 1:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower())
        return
    # each process builds its own app from the same settings, read back from the environment
    os.environ.update(settings.to_env())
    uvicorn.run(
        "vecq.producer.gateway.app:app_from_env", factory=True, workers=settings.processes,
        host=settings.host, port=settings.port, log_level=log_level.lower(),
    )  # fmt: skip
