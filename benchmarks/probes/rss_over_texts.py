"""Worker memory over a long bulk run: RSS (and Redis keys/memory) at checkpoints (issue 5).

Starts a private redis-server on a free port and one `vecq worker --backend null` process, then
streams N texts through `BulkSubmitter` (256-text chunks, 8,192-text window) and reads the
worker's VmRSS from /proc at each checkpoint.  A flat RSS shows the worker keeps nothing per job;
a flat key count shows bulk deletes what it wrote.

    python benchmarks/probes/rss_over_texts.py --texts 1000000 --checkpoints 100000,500000,1000000
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from vecq.producer import Client
from vecq.producer.bulk import BulkSubmitter


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _texts(n: int) -> Iterator[str]:
    """Generated, never a list, so the producer holds one chunk at a time."""
    for i in range(n):
        yield f"bulk text number {i} " + "lorem ipsum dolor " * (i % 7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=1_000_000)
    ap.add_argument("--checkpoints", default="100000,500000,1000000")
    args = ap.parse_args()
    marks = sorted(int(x) for x in args.checkpoints.split(","))
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="vecq-rss-"))
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(url)
    worker = None
    try:
        while True:
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        cmd = [
            sys.executable,
            "-c",
            "from vecq.worker.cli import main; main()",
            "worker",
            "--backend",
            "null",
        ]
        worker = subprocess.Popen([*cmd, "--redis", url, "--log-level", "WARNING"])
        rows = []
        start = time.perf_counter()
        with Client(url) as client:
            bulk = BulkSubmitter(client, run_id="rss", chunk_size=256, window=8192)
            done, keys_max = 0, 0
            for _, vectors in bulk.run(_texts(args.texts)):
                done += len(vectors)
                keys_max = max(keys_max, conn.dbsize()) if done % 8192 < 256 else keys_max
                while marks and done >= marks[0]:
                    info = conn.info("memory")
                    row = {
                        "texts": marks.pop(0),
                        "worker_rss_mb": round(rss_mb(worker.pid), 1),
                        "redis_keys": conn.dbsize(),
                        "redis_used_mb": round(info["used_memory"] / 2**20, 1),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        report = {
            "rows": rows,
            "max_redis_keys_sampled": keys_max,
            "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(report, indent=1))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
