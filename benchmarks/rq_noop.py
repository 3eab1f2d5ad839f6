"""Stock rq's own ceiling on this machine: 1,000 no-op jobs (`builtins.len`, rq's default
serializer) through `rq worker -w rq.worker.SimpleWorker --burst` on a private redis-server.
DESIGN.md quotes ~290 jobs/s "on a 2-core machine"; this says what the machine at hand does.

    python benchmarks/rq_noop.py [--jobs 1000]
"""

from __future__ import annotations

import click


@click.command()
@click.option("--jobs", "n", type=int, default=1000, show_default=True)
def main(n: int) -> None:
    import redis
    from rq import Queue

    from vecq.worker.bench import _span, run_stock_rq
    from vecq.worker.embedded import embedded_redis

    with embedded_redis(binary="redis-server") as url:
        conn = redis.Redis.from_url(url)
        queue = Queue("noop", connection=conn)
        data = [Queue.prepare_data("builtins.len", args=["abc"]) for _ in range(n)]
        with conn.pipeline() as pipe:
            ids = [job.id for job in queue.enqueue_many(data, pipeline=pipe)]
            pipe.execute()
        run_stock_rq(url, "noop")
        click.echo(f"stock rq, no-op jobs: {n / _span(conn, ids):.0f} jobs/s")


if __name__ == "__main__":
    main()
