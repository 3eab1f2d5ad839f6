"""`vecq build`: a model dir into a verified bundle."""

from __future__ import annotations

import click

from vecq.engines import backends

from .options import command, fail


def _int_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,2,4,8") from None


@command()
@click.argument("model_dir")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bundle dir to write.")
@click.option("--backend", type=click.Choice(backends.names()), default="onnx")
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
        fail(str(exc))


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
        f"{out}: {manifest.name} {'reranker ' if manifest.task == 'rerank' else ''}{manifest.backend} "
        f"{manifest.precision}, {len(manifest.shapes)} shapes, {manifest.parity.summary()}"
    )
