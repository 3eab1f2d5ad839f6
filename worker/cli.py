"""The `vecq` command line: build, worker, embed, status, bench.

Each verb is thin: it maps flags onto settings / library calls and prints.  Heavy imports happen
inside the verbs, so `vecq --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .settings import WorkerSettings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vecq")
def main() -> None:
    """vecq: BERT-family encoders as a durable, batched embedding service on Redis."""


# --- the batch worker, status and health (issue 3) -------------------------------------------
def _fail(message: str) -> None:
    click.echo(f"vecq: {message}", err=True)
    raise SystemExit(2)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


@main.command()
@click.option("--bundle", type=click.Path(file_okay=False), help="Bundle dir (`vecq build` output).")
@click.option("--model", type=click.Path(file_okay=False), help="Model dir (default: all-MiniLM-L6-v2).")
@click.option("--backend", type=click.Choice(["onnx", "torch", "tensorrt", "null"]), help="Engine backend.")
@click.option("--device", help="cpu or cuda:N.")
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--lanes", help="Lanes served, e.g. interactive,bulk.")
@click.option("--max-wait-ms", type=float, help="Longest a partial batch waits for batch-mates.")
@click.option("--prefetch-texts", type=int, help="Texts taken but not yet written back, at most.")
@click.option("--burst", is_flag=True, default=None, help="Exit when the queues are empty.")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option(
    "--parallel-tokenize/--serial-tokenize",
    default=None,
    help="Tokenize on all cores or on one (default: all only for a GPU engine on 4+ cores).",
)
@click.option("--name", help="Model name the queues are derived from (default: the model's own).")
@click.option("--worker-name", help="rq worker name (default: vecq.<host>.<pid>.<random>).")
@click.option("--heartbeat-ttl", type=int, help="Seconds an execution lives without a heartbeat.")
@click.option("--cleanup-interval", type=float, help="Seconds between recovery passes.")
@click.option("--result-ttl", type=int, help="Seconds results are kept (unless the job sets its own).")
@click.option("--job-timeout", type=int, help="Seconds a job may stay in flight before it is failed.")
@click.option("--engine-timeout", type=float, help="Seconds one engine call may run before the worker exits.")
@click.option(
    "--gpus", help="'all' or a list like 0,1: one worker process per GPU, supervised (not with --device)."
)
@click.option("--workers-per-gpu", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
@click.pass_context
def worker(
    ctx: click.Context, log_level: str, gpus: str | None, workers_per_gpu: int, **flags: object
) -> None:
    """Serve embedding jobs from Redis in batches (SIGTERM drains and exits 0)."""
    import logging

    from pydantic import ValidationError

    from vecq.producer.contract import one_line

    from .settings import WorkerSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = WorkerSettings(**given)
    except ValidationError as exc:
        _fail(one_line(exc, unnamed="settings"))
    if gpus is not None:
        raise SystemExit(_supervise(ctx, settings, gpus, workers_per_gpu, log_level, given))
    if workers_per_gpu != 1:
        _fail("--workers-per-gpu needs --gpus")
    from .worker import BatchWorker, NameTaken, WorkerCrashed

    try:
        batch_worker = BatchWorker.from_settings(settings)
    except Exception as exc:  # model, bundle, backend or Redis problems: one line
        _fail(_one_line(exc))
    try:
        batch_worker.work()
    except NameTaken as exc:
        _fail(_one_line(exc))
    except WorkerCrashed as exc:  # exit 1, not 2: a supervisor restarts a crash, not a usage error
        click.echo(f"vecq: {_one_line(exc)}", err=True)
        raise SystemExit(1) from None


def _supervise(
    ctx: click.Context,
    settings: WorkerSettings,
    gpus: str,
    per_gpu: int,
    log_level: str,
    given: dict[str, object],
) -> int:
    """`--gpus`: the same flags, minus the per-process ones, for one child worker per GPU."""
    from .supervisor import NoGPUs, Supervisor, parse_gpus

    if "device" in given:
        _fail("--gpus and --device exclude each other (each GPU's worker gets its own device)")
    try:
        ids = parse_gpus(gpus)
    except (NoGPUs, ValueError) as exc:
        _fail(str(exc))
    per_child = {"device", "metrics_port", "worker_name"}
    args = ["--log-level", log_level]
    for param in ctx.command.params:
        value = given.get(param.name or "")
        if value is None or param.name in per_child:
            continue
        flag = param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            args += [flag] if value else []
        else:
            args += [flag, str(value)]
    supervisor = Supervisor.for_gpus(
        ids,
        args,
        workers_per_gpu=per_gpu,
        metrics_port=settings.metrics_port,
        worker_name=given.get("worker_name"),  # type: ignore[arg-type]
    )
    click.echo(f"vecq: {len(supervisor.children)} worker(s) on GPU(s) {','.join(ids)}", err=True)
    return supervisor.run()


@main.command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--sample", type=float, default=1.0, show_default=True, help="Seconds to measure throughput.")
def status(redis_url: str | None, sample: float) -> None:
    """Queues (jobs waiting, taken, started, finished, failed), workers, in-flight, throughput."""
    import redis

    from vecq.producer.connection import mask_url, open_sync
    from vecq.producer.errors import RedisUnavailable

    from .settings import WorkerSettings
    from .status import gather, render

    url = redis_url or WorkerSettings().redis_url
    try:
        report = gather(open_sync(url), sample_s=sample)
    except RedisUnavailable as exc:  # a bad URL: the message names it, masked
        _fail(str(exc))
    except (redis.RedisError, ValueError) as exc:
        _fail(f"{mask_url(url)}: {_one_line(exc)}")
    click.echo(render(report, url=mask_url(url)))


@main.command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--worker-name", help="This worker's health (default: any vecq worker).")
@click.option("--name", help="Only workers of this model.")
def health(redis_url: str | None, worker_name: str | None, name: str | None) -> None:
    """Exit 0 if the worker (or any vecq worker) has a live health key, else 1."""
    import redis

    from vecq.producer.connection import mask_url, open_sync
    from vecq.producer.errors import RedisUnavailable

    from .settings import WorkerSettings
    from .status import check_health

    url = redis_url or WorkerSettings().redis_url
    try:
        ok, message = check_health(open_sync(url), worker=worker_name, model=name)
    except (redis.RedisError, RedisUnavailable, ValueError) as exc:
        detail = str(exc) if isinstance(exc, RedisUnavailable) else f"{mask_url(url)}: {_one_line(exc)}"
        click.echo(f"vecq: {detail}", err=True)
        raise SystemExit(1) from None
    click.echo(message)
    raise SystemExit(0 if ok else 1)


# --- vecq embed --------------------------------------------------------------------------------
@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=".npy or .parquet"
)
@click.option(
    "--bundle", type=click.Path(file_okay=False, path_type=Path), help="Bundle dir (embedded worker)."
)
@click.option(
    "--model", type=click.Path(file_okay=False, path_type=Path), help="Model dir (embedded worker)."
)
@click.option("--backend", type=click.Choice(["onnx", "torch", "null"]), help="Embedded worker's backend.")
@click.option(
    "--precision", type=click.Choice(["fp32", "int8"]),
    help="Embedded onnx worker on a model dir: int8 is ~1.7x fp32 on a CPU with VNNI (less "
    "without), cosine >= 0.99 to fp32.",
)  # fmt: skip
@click.option("--redis", "redis_url", help="Use this Redis and its workers instead of embedded mode.")
@click.option("--name", help="Model (queue) name; with --redis, the workers' model.")
@click.option("--text-field", default="text", show_default=True, help=".jsonl/.csv/.parquet text field.")
@click.option("--id-field", help=".jsonl/.csv/.parquet id field, written beside each vector in .parquet.")
@click.option("--chunk-size", type=int, default=256, show_default=True, help="Texts per job.")
@click.option("--window", type=int, default=8192, show_default=True, help="Texts in flight, at most.")
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
def embed(
    input_path: Path,
    out: Path,
    bundle: Path | None,
    model: Path | None,
    backend: str | None,
    precision: str | None,
    redis_url: str | None,
    name: str | None,
    text_field: str,
    id_field: str | None,
    chunk_size: int,
    window: int,
    log_level: str,
) -> None:
    """Embed INPUT (.txt one text per line, .jsonl, .csv, .parquet) into OUT, in input order.

    Without --redis it is embedded: a private Valkey server and an in-process worker with the
    default model (all-MiniLM-L6-v2) on CPU, both stopped at the end.  Resumable: run the same
    command again after an interruption and finished chunks are not computed again.
    """
    import logging

    from .embed import EmbedJob, embed_file
    from .files import CorpusError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(log_level.upper())  # rq's worker installs its own INFO handler
    if bundle and model:
        _fail("pass --bundle or --model, not both")
    job = EmbedJob(
        input=input_path,
        out=out,
        redis_url=redis_url,
        model_path=bundle or model,
        backend=backend,
        precision=precision,
        name=name,
        text_field=text_field,
        id_field=id_field,
        chunk_size=chunk_size,
        window=window,
    )
    try:
        report = embed_file(job)
    except KeyboardInterrupt:
        _fail(f"interrupted; run the same command again to resume {out}")
    except (CorpusError, ValueError, RuntimeError, ConnectionError, TimeoutError, LookupError) as exc:
        _fail(_one_line(exc))
    click.echo(
        f"{out}: {report.rows} vectors of {report.dim} dims in {report.seconds:.1f}s "
        f"({report.texts_per_second:,.0f} texts/s; {report.chunks_resumed} chunks resumed)"
    )


def _register_bench() -> None:
    from .bench import bench

    if "bench" not in main.commands:
        main.add_command(bench)


_register_bench()


def _int_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,2,4,8") from None


@main.command()
@click.argument("model_dir")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bundle dir to write.")
@click.option("--backend", type=click.Choice(["onnx", "torch", "tensorrt"]), default="onnx")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (what it is built for).")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32", show_default=True,
    help="int8: CPU only, opt-in (dynamic quantization, parity >= 0.99); fp16/bf16: CUDA only.",
)  # fmt: skip
@click.option("--batch-sizes", callback=_int_list, help="e.g. 1,2,4,8,16,32,64,128 (default: per device).")
@click.option("--seq-lens", callback=_int_list, help="e.g. 16,32,64,128,256,512 (capped at model max).")
@click.option("--max-batch-tokens", type=int, help="Drop shapes whose batch x seq_len exceeds this.")
@click.option("--pooling", type=click.Choice(["cls", "mean"]), help="Default: model's ST config, else cls.")
@click.option("--normalize/--no-normalize", default=None, help="Default: the model's ST config.")
@click.option("--name", help="Model name recorded in the bundle (default: the model dir's name).")
def build(model_dir: str, out: str, **flags: object) -> None:
    """Export MODEL_DIR (or `default`) to a verified bundle at --out."""
    from rich.console import Console

    from vecq.engines import VecqEngineError

    console = Console(stderr=True, log_path=False)
    try:
        _build(model_dir, out, console=console, **flags)
    except VecqEngineError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


def _build(model_dir: str, out: str, *, console, **flags) -> None:
    from vecq.engines import default_model_dir
    from vecq.engines.build import build_bundle

    name = flags.pop("name", None)
    if model_dir == "default":
        model_dir, name = str(default_model_dir()), name or "all-minilm-l6-v2"
    with console.status("building bundle", spinner="dots") as status:

        def progress(message: str) -> None:
            console.log(message)
            status.update(message)

        manifest = build_bundle(model_dir, out, name=name, progress=progress, **flags)
    click.echo(
        f"{out}: {manifest.name} {manifest.backend} {manifest.precision}, {len(manifest.shapes)} shapes, "
        f"parity min cosine {manifest.parity.min_cosine:.7f} over {manifest.parity.n_texts} texts"
    )


# --- vecq gateway ------------------------------------------------------------------------------
@main.command()
@click.option("--redis", "redis_url", help="Redis URL (env VECQ_REDIS_URL).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; env VECQ_HOST).")
@click.option("--port", type=int, help="Port to listen on (default 8000; env VECQ_PORT).")
@click.option("--timeout", type=float, help="Seconds a request waits for its vectors before a 504.")
@click.option("--max-queued-texts", type=int, help="Answer 429 when a model's queues hold more texts.")
@click.option(
    "--tokenizer", "tokenizers", multiple=True, metavar="NAME=PATH",
    help="Model NAME's tokenizer (a model dir or bundle with tokenizer.json), for usage counts; repeatable.",
)  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def gateway(log_level: str, tokenizers: tuple[str, ...], **flags: object) -> None:
    """Serve an OpenAI-compatible POST /v1/embeddings, /health and /metrics (needs vecq[gateway])."""
    import logging

    from pydantic import ValidationError

    from vecq.producer.contract import one_line

    try:
        import uvicorn

        from vecq.producer.gateway import GatewaySettings, create_app
    except ImportError as exc:
        _fail(f"vecq gateway needs the gateway extra (pip install 'vecq[gateway]'): {exc}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {k: v for k, v in flags.items() if v is not None}
    if tokenizers:
        given["tokenizers"] = list(tokenizers)
    try:
        settings = GatewaySettings(**given)
        app = create_app(settings)
    except ValidationError as exc:
        _fail(one_line(exc, unnamed="settings"))
    except ValueError as exc:  # a tokenizer dir without tokenizer.json, an unreadable config
        _fail(str(exc))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower())
