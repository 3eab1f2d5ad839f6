"""The `vecq` command line: build, worker, embed, status, bench.

Each verb is thin: it maps flags onto settings / library calls and prints.  Heavy imports happen
inside the verbs, so `vecq --help` is instant.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vecq")
def main() -> None:
    """vecq: BERT-family encoders as a durable, batched embedding service on Redis."""
