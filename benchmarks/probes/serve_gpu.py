"""`vecq serve` as a user runs it on a GPU machine (issue 18): one command, requests, Ctrl-C.

Starts `vecq serve --model DIR --precision fp16` (embedded Valkey, one worker per visible GPU,
the gateway) on a BERT-base with bert-base-uncased's vocab (random weights), waits until the
gateway lists the model, sends embeddings requests through the OpenAI route and checks their
vectors against `Embedder` torch fp32 on the CPU, then sends SIGINT (Ctrl-C) and times the
exit of the whole process group.  `--gpus none` runs the same on the CPU (a smoke run here).

    python3 benchmarks/probes/serve_gpu.py [--gpus auto|none] [--model random-bert-base-en|DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTS = ["where is the Eiffel Tower?", "北京是中国的首都。", "a longer passage about GPUs " * 20]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", default="auto")
    parser.add_argument("--model", default="random-bert-base-en")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vecq-serve-") as tmp:
        from vecq.worker.bench.models import model_dir

        model = model_dir(args.model, Path(tmp))
        cmd = [sys.executable, "-m", "vecq.worker", "serve", "--model", str(model), "--name", "bench",
               "--port", str(args.port), "--gpus", args.gpus, "--log-level", "WARNING"]  # fmt: skip
        if args.gpus != "none":
            cmd += ["--precision", "fp16"]
        log = Path(tmp) / "serve.log"
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ok = _serve_and_check(proc, args, model, start)
        finally:
            stopped = _ctrl_c(proc)
            print(log.read_text()[-3000:])
        print(
            f"Ctrl-C: the whole process group gone after {stopped:.2f} s" if stopped >= 0 else "Ctrl-C: HUNG"
        )
        return 0 if ok and stopped >= 0 else 1


def _serve_and_check(proc: subprocess.Popen, args: argparse.Namespace, model: Path, start: float) -> bool:
    import httpx

    url = f"http://127.0.0.1:{args.port}"
    while True:
        if proc.poll() is not None:
            print(f"vecq serve exited with {proc.returncode} before it was ready")
            return False
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).json().get("data"):
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.perf_counter() - start > 300:
            print("not ready after 300 s")
            return False
        time.sleep(0.5)
    print(f"ready (the gateway lists the model) {time.perf_counter() - start:.1f} s after the command")
    body = {"model": "bench", "input": TEXTS}
    with httpx.Client(base_url=url, timeout=30) as client:
        reply = client.post("/v1/embeddings", json=body)
        reply.raise_for_status()
        got = np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)
        latencies = []
        for i in range(args.requests):
            t0 = time.perf_counter()
            client.post("/v1/embeddings", json={"model": "bench", "input": [f"query {i}"]}).raise_for_status()
            latencies.append((time.perf_counter() - t0) * 1000)
        health = client.get("/health").json()
    from vecq.engines import Embedder

    with Embedder.load(model, backend="torch") as reference:
        want = reference.embed(TEXTS)
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    print(f"vectors {got.shape}, cosine vs torch fp32 CPU: min {cos.min():.6f}")
    print(f"{args.requests} one-text requests, one after another: p50 {np.percentile(latencies, 50):.2f} ms, "
          f"p99 {np.percentile(latencies, 99):.2f} ms")  # fmt: skip
    print(f"/health: {health}")
    return bool(cos.min() >= 0.999 and got.shape == (len(TEXTS), want.shape[1]))


def _ctrl_c(proc: subprocess.Popen) -> float:
    """Seconds from SIGINT to the whole process group gone, or -1 if not within 30 s."""
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    while time.perf_counter() - t0 < 30:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            proc.wait()
            return time.perf_counter() - t0
        proc.poll()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    return -1.0


if __name__ == "__main__":
    sys.exit(main())
