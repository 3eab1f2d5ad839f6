"""The probes' one way to time GPU work: CUDA events around `reps` calls after `warm` ones."""

from __future__ import annotations

from collections.abc import Callable

import torch


def cuda_ms(fn: Callable[[], object], reps: int, *, warm: int = 3) -> float:
    """Milliseconds per call of `fn` on the current stream (Triton compiles and autotunes in
    the `warm` calls, outside what is timed)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps
