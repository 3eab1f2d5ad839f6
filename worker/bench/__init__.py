"""`vecq bench`: benchmarks, a client of the product like any user's code.

Loaded only when `vecq bench` runs (the command line names this package lazily).  Every
benchmark enqueues through the producer (`Client`, `BulkSubmitter`) and builds engines through
`Embedder` and the backend registry, so what it times is what users run.  One module per
command: `queue`, `producer`, `engines` (with `gpu` for the GPU tables), `embed`, `pipeline`, `scale`,
`gateway`, `long` (a base-size XLM-RoBERTa at 512 and 8,192 tokens), `rerank` (a base-size
cross-encoder against `CrossEncoder.predict`);
`corpus` is the deterministic corpus they share and `models` the benchmark models.
"""

from __future__ import annotations

import click

from .embed import embed_bench
from .engines import engines
from .gateway import gateway_bench
from .long import long_bench
from .pipeline import pipeline
from .producer import producer_bench
from .queue import queue_bench
from .rerank import rerank_bench
from .scale import scale


@click.group()
def bench() -> None:
    """Benchmarks: engines, the queue path, end to end."""


for _command in (
    queue_bench,
    producer_bench,
    engines,
    pipeline,
    embed_bench,
    scale,
    gateway_bench,
    long_bench,
    rerank_bench,
):
    bench.add_command(_command)
