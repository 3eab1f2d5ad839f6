"""Probe (issue 14): how long the engine thread waits for the GIL while other threads run Python.

The worker's engine thread spends most of its time waiting for the device with the GIL released;
each time a batch is done it must take the GIL back to collect it and start the next.  CPython
lets a thread that wants the GIL wait up to the switch interval (5 ms by default) per busy
thread ahead of it, and a worker has several (main loop, finishing, tokenizer I/O).  Emulated
here, no GPU needed: a "device" whose batches take `--batch-ms` (the packed engine's 16k-token
buffer takes ~6 ms on the H200), an engine loop that starts batch k+1 before collecting k as
`EngineRunner` does, and N threads running pure Python beside it.  Prints how busy the device
stays for each switch interval.

    python3 benchmarks/probes/gil_handoff.py [--batch-ms 6] [--threads 1,3] [--batches 300]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def device_busy(interval: float, *, batch_s: float, batches: int, threads: int) -> float:
    """Share of the wall time the emulated device is busy."""
    sys.setswitchinterval(interval)
    stop = threading.Event()

    def python_work() -> None:
        d: dict[int, int] = {}
        while not stop.is_set():
            for i in range(1000):
                d[i] = i * 2

    busy = [threading.Thread(target=python_work, daemon=True) for _ in range(threads)]
    for t in busy:
        t.start()
    free_at = start = time.perf_counter()
    previous_done: float | None = None
    for _ in range(batches):
        sum(range(2000))  # the host's share of starting a batch (packing, the copies' launch)
        free_at = max(time.perf_counter(), free_at) + batch_s  # queued behind what is running
        if previous_done is not None:  # collect batch k-1: a wait with the GIL released
            time.sleep(max(0.0, previous_done - time.perf_counter()))
        previous_done = free_at
    time.sleep(max(0.0, free_at - time.perf_counter()))
    elapsed = time.perf_counter() - start
    stop.set()
    for t in busy:
        t.join()
    return batches * batch_s / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-ms", type=float, default=6.0)
    ap.add_argument("--threads", default="0,1,3")
    ap.add_argument("--batches", type=int, default=300)
    args = ap.parse_args()
    for n in [int(x) for x in args.threads.split(",")]:
        for interval in (0.005, 0.001, 0.0005):
            share = device_busy(interval, batch_s=args.batch_ms / 1000, batches=args.batches, threads=n)
            print(
                f"{n} busy Python thread(s), switch interval {interval * 1000:.1f} ms: "
                f"device busy {share:.0%}"
            )


if __name__ == "__main__":
    main()
