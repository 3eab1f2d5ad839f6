"""`vecq embed`: a corpus file in, a vector file out."""

from __future__ import annotations

from pathlib import Path

import click

from ..embed import EmbedSettings
from ..errors import error_line
from .options import command, fail, given, options_from, settings_or_fail


@command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@options_from(EmbedSettings, skip=("input", "progress", "stall_timeout"))
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
def embed(input_path: Path, log_level: str, **flags: object) -> None:
    """Embed INPUT (.txt one text per line, .jsonl, .csv, .parquet) into OUT, in input order.

    Without --redis it is embedded: a private Valkey server and an in-process worker with the
    default model (all-MiniLM-L6-v2) on CPU, both stopped at the end.  Resumable: run the same
    command again after an interruption and finished chunks are not computed again.
    """
    import logging

    from vecq.engines.errors import VecqEngineError

    from ..embed import embed_file
    from ..embed.formats import CorpusError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(log_level.upper())  # rq's worker installs its own INFO handler
    # a bundle built on first use (a minute for int8) says so, whatever the level
    logging.getLogger("vecq.engines.cache").setLevel(min(logging.INFO, logging.getLogger().level))
    settings: EmbedSettings = settings_or_fail(EmbedSettings, {"input": input_path, **given(flags)})
    try:
        report = embed_file(settings)
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to resume {settings.out}")
    except (CorpusError, VecqEngineError, OSError, ValueError, RuntimeError, LookupError) as exc:
        fail(error_line(exc))
    resumed = f"; {report.chunks_resumed} chunks resumed"
    if report.rows_resumed:  # the rate is this run's: resumed rows are not in it
        resumed += f" ({report.rows_resumed:,} rows written by an earlier run, not in the rate)"
    if settings.reuse is not None:  # the rate is of the texts embedded, not of those copied
        resumed += (
            f"; {report.rows_reused:,} reused from {settings.reuse.name}, {report.texts_sent:,} embedded"
        )
    click.echo(
        f"{settings.out}: {report.rows} vectors of {report.dim} dims in {report.seconds:.1f}s "
        f"({report.texts_per_second:,.0f} texts/s{resumed})"
    )
