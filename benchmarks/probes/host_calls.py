"""Probe (issue 14, idle latency and the write-up's workload): the host's own cost around a lone
query, on any machine, no GPU.

- `submit`: `Client.submit` of one interactive 1-text job against the Redis at `--url` (p50 of
  `--calls`), beside a PING (the round trip alone), and the commands one submit sends;
- `embed`: `Embedder.embed` of one of the write-up's queries around an engine that returns at
  once (its tokenizer, batching and copies: what the write-up's B = 1 call adds to the engine's
  `start` + device time), beside the tokenizer alone.

    python3 benchmarks/probes/host_calls.py [--url redis://127.0.0.1:6379/15] [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vecq.engines import Embedder
from vecq.engines.spec import read_spec
from vecq.engines.tokenizer import TextTokenizer
from vecq.producer import Client
from vecq.worker.bench.models import RANDOM_BERT_BASE_ZH, model_dir


def p50_us(fn: Callable[[int], object], calls: int) -> float:
    for i in range(50):
        fn(i)
    took = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        took.append(time.perf_counter() - t0)
    return statistics.median(took) * 1e6


class _Done:
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def ready(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self.rows.copy()


class InstantEngine:
    """A packing engine (`token_budget`, `max_rows`) whose batches are done when started."""

    dim, token_budget, max_rows, shapes = 768, 32768, 2048, None

    def __init__(self) -> None:
        self._out = np.zeros((self.max_rows, self.dim), dtype=np.float32)

    def start(self, batch):  # type: ignore[no-untyped-def]
        return _Done(self._out[: batch.rows])

    def run(self, batch):  # type: ignore[no-untyped-def]
        return self.start(batch).result()

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


def submit(url: str, calls: int) -> None:
    with Client(url) as c:
        c.connection.flushdb()
        us = p50_us(
            lambda i: c.submit([f"a short query number {i}"], model="probe", lane="interactive"), calls
        )
        ping = p50_us(lambda _: c.connection.ping(), calls)
        before = c.connection.info("commandstats")
        c.submit(["one more"], model="probe", lane="interactive")
        after = c.connection.info("commandstats")
        sent = {
            k.removeprefix("cmdstat_"): after[k]["calls"] - before.get(k, {}).get("calls", 0) for k in after
        }
        sent = {k: v for k, v in sent.items() if v and k != "info"}  # the INFO before is the probe's
        c.connection.flushdb()
    print(f"submit: Client.submit of one 1-text interactive job p50 {us:.0f} us; PING p50 {ping:.0f} us")
    print(f"submit: commands one submit sends: {sent}")


def embed(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = model_dir(RANDOM_BERT_BASE_ZH, Path(tmp))
        spec = read_spec(root).model_copy(update={"max_seq_len": 64})
        tok = TextTokenizer.from_dir(root, max_seq_len=64)
        emb = Embedder(spec=spec, tokenizer=tok, engine=InstantEngine())  # type: ignore[arg-type]
        query = ["你好啊"]
        us = p50_us(lambda _: emb.embed(query), calls)
        tokenize = p50_us(lambda _: tok.encode(query), calls)
    print(f"embed: Embedder.embed of one write-up query, engine done at once: p50 {us:.1f} us "
          f"(its tokenizer alone {tokenize:.1f} us)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    submit(args.url, args.calls)
    embed(args.calls)


if __name__ == "__main__":
    main()
