"""Where do slow interactive requests come from?  Sequential single-text requests to one idle
worker, two passes over the same texts: slowness that repeats on the same texts is about the
texts (length, shape); slowness only in the first pass is first-use cost; neither is noise.

    python benchmarks/latency_probe.py --bundle BUNDLE --device cuda   # or --backend null
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--bundle", type=click.Path(file_okay=False))
@click.option("--backend", default=None)
@click.option("--device", default="cpu")
@click.option("--requests", "n", type=int, default=300)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def main(bundle: str | None, backend: str | None, device: str, n: int, json_out: Path | None) -> None:
    import redis
    from rq import Worker

    from vecq.producer import Client
    from vecq.worker.corpus import make_corpus
    from vecq.worker.embedded import embedded_redis

    texts = make_corpus(n, seed=1)
    flags = (["--bundle", bundle] if bundle else []) + (["--backend", backend] if backend else [])
    with embedded_redis() as url:
        cmd = [sys.executable, "-m", "vecq.worker", "worker", "--redis", url, "--device", device]
        worker = subprocess.Popen([*cmd, "--name", "probe", "--log-level", "WARNING", *flags])
        try:
            conn = redis.Redis.from_url(url)
            while not Worker.all(connection=conn):
                assert worker.poll() is None, "worker exited"
                time.sleep(0.2)
            time.sleep(1.0)
            client = Client(url)
            rows = []
            for rnd in (1, 2):
                for i, text in enumerate(texts):
                    t0 = time.perf_counter()
                    client.embed([text], model="probe", timeout=30)
                    rows.append(
                        {"pass": rnd, "i": i, "chars": len(text), "ms": (time.perf_counter() - t0) * 1e3}
                    )
        finally:
            worker.terminate()
            worker.wait(60)
    for rnd in (1, 2):
        ms = np.array([r["ms"] for r in rows if r["pass"] == rnd])
        p50, p90, p99, top = np.percentile(ms, [50, 90, 99, 100])
        click.echo(f"pass {rnd}: p50 {p50:.2f} p90 {p90:.2f} p99 {p99:.2f} max {top:.2f} ms")
    slow = sorted(rows, key=lambda r: -r["ms"])[:12]
    click.echo(
        "slowest: "
        + "; ".join(f"pass {r['pass']} #{r['i']} {r['chars']} chars {r['ms']:.1f} ms" for r in slow)
    )
    long = [r["ms"] for r in rows if r["chars"] > 1000]
    click.echo(f"texts > 1000 chars: {len(long)}, median {np.median(long) if long else 0:.1f} ms")
    if json_out:
        json_out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
