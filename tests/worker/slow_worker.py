"""A worker process for fault tests: the null engine, slowed down so that batches are in flight.

Run as `python slow_worker.py REDIS_URL SECONDS_PER_BATCH [WORKER_NAME]`.
"""

from __future__ import annotations

import logging
import sys
import time

from vecq.engines import Embedder
from vecq.worker.settings import WorkerSettings
from vecq.worker.worker import BatchWorker


class SlowEngine:
    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.shapes, self.dim = inner.shapes, inner.dim

    def warmup(self) -> None: ...

    def close(self) -> None: ...

    def run(self, batch):
        time.sleep(self.delay)
        return self.inner.run(batch)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    url, delay = sys.argv[1], float(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else None
    base = Embedder.load(backend="null")
    embedder = Embedder(spec=base.spec, tokenizer=base.tokenizer, engine=SlowEngine(base.engine, delay))
    settings = WorkerSettings(
        redis_url=url,
        worker_name=name,
        heartbeat_ttl=3,
        cleanup_interval=1.0,
        stranded_after=2.0,
        prefetch_texts=64,
        max_wait_ms=2,
    )
    BatchWorker(embedder, settings=settings).work()


if __name__ == "__main__":
    main()
