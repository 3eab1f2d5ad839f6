"""The `vecq` command line: one verb per module, loaded only when it runs.

Each verb is thin: it maps flags onto a settings object (whose fields make its options, see
`options.py`) or a library call, and prints.  The verbs are named here with their one-line help,
so `vecq --help` imports none of them (nor torch, rq or the benchmarks).  Adding a verb is a
module and one line in `VERBS`.
"""

from __future__ import annotations

import importlib

import click

#: verb -> (the module:attribute of its click command, its line in `vecq --help`).
VERBS: dict[str, tuple[str, str]] = {
    "build": ("vecq.worker.cli.build:build", "Export a model dir (or `default`) to a verified bundle."),
    "worker": ("vecq.worker.cli.worker:worker", "Serve embedding jobs from Redis in batches."),
    "embed": ("vecq.worker.cli.embed:embed", "Embed a corpus file into a vector file, in input order."),
    "status": ("vecq.worker.cli.worker:status", "Queues, workers, in-flight jobs and throughput."),
    "health": ("vecq.worker.cli.worker:health", "Exit 0 if a worker has a live health key, else 1."),
    "gateway": ("vecq.worker.cli.gateway:gateway", "Serve an OpenAI-compatible POST /v1/embeddings."),
    "serve": ("vecq.worker.cli.serve:serve", "Redis, workers and the gateway on this machine: one command."),
    "bench": ("vecq.worker.bench:bench", "Benchmarks: engines, the queue path, end to end."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is asked for by name."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in VERBS:
            return None
        module, _, attr = VERBS[cmd_name][0].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in VERBS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vecq")
def main() -> None:
    """vecq: BERT-family encoders as a durable, batched embedding service on Redis."""
