"""Tokenizing off the main thread: each take's jobs one or more tasks, handed back when done.

Two ways, one face.  Beside a CPU engine (and in tests) a take is one task on a `vecq-tokenize`
thread: `tokenizers` releases the GIL while it works, and the engine needs the cores.  A GPU
worker instead sends tasks to `tokenprocs.TokenizerProcess` children, round robin, a take cut
into tasks of about `TASK_TEXTS` texts: there the per-text Python that turns `tokenizers`' output
into arrays runs in other processes, on other cores, not under the worker's GIL.  A take of a
few texts (an interactive request) is tokenized at once on the calling thread: no hop to wait
for.  A tokenizer failure re-raises where its task is collected, in the main thread, so the
worker exits non-zero instead of leaving jobs that are never planned.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor

from vecq.engines.tokenizer import TextTokenizer
from vecq.producer.keys import LANES

from .planner import Encoded, NewJob, encode_jobs
from .tokenprocs import TokenizerProcess
from .validation import WorkItem

#: A take of at most this many texts is tokenized on the calling thread.
INLINE_TEXTS = 8
#: Texts per task sent to a tokenizer process (whole jobs: a task may hold more).
TASK_TEXTS = 512


class Tokenizing:
    """Tasks in flight, oldest first; on a thread, or on `processes` tokenizer processes."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        *,
        processes: int = 0,
        threads: int = 1,
        wake: threading.Event | None = None,
    ) -> None:
        self.encoder = tokenizer
        self.wake = wake  # set when a task finishes: the main thread plans it without delay
        self._procs = [TokenizerProcess(tokenizer, threads=threads) for _ in range(processes)]
        # one I/O thread per process (its pipe is used by one thread at a time); else one thread
        n = max(1, len(self._procs))
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="vecq-tokenize") for _ in range(n)]
        self._next = itertools.cycle(range(n))
        self._tasks: deque[tuple[Future[Encoded], int]] = deque()  # (task, its texts)
        self.texts = 0

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def submit(self, items: Sequence[WorkItem], *, now: float) -> None:
        """Tokenize a take's jobs: its interactive ones apart from its bulk ones, so a query
        taken with bulk jobs never waits behind their task (it did, up to ~0.5 s on the 2-core
        sandbox under bulk: benchmarks/probes/latency_path.py --under-bulk)."""
        interactive = [i for i in items if i.lane == LANES[0]]
        for group in (interactive, [i for i in items if i.lane != LANES[0]]):
            if group:
                self._submit([NewJob(i, i.texts, i.lane, i.truncate, i.query) for i in group], now=now)

    def _submit(self, jobs: list[NewJob], *, now: float) -> None:
        texts = sum(len(j.texts) for j in jobs)
        if texts <= INLINE_TEXTS:
            task: Future[Encoded] = Future()
            try:
                task.set_result(encode_jobs(self.encoder, jobs, now=now))
            except Exception as exc:
                task.set_exception(exc)
            self._add(task, texts)
            return
        if not self._procs:
            self._add(self._pools[0].submit(encode_jobs, self.encoder, jobs, now=now), texts)
            return
        for chunk, n in _chunks(jobs, TASK_TEXTS):
            k = next(self._next)
            self._add(self._pools[k].submit(self._procs[k].encode_jobs, chunk, now=now), n)

    def _add(self, task: Future[Encoded], texts: int) -> None:
        if self.wake is not None and not task.done():  # one tokenized inline is planned this pass
            task.add_done_callback(lambda _: self.wake.set())  # type: ignore[union-attr]
        self._tasks.append((task, texts))
        self.texts += texts

    def ready(self, *, wait: float = 0.0) -> Iterator[Encoded]:
        """Finished tasks, oldest first; `wait`: seconds to wait for the oldest one, if it is
        still running.  A task done before an older one still running is handed back first (a
        query tokenized at once does not wait behind a bulk task)."""
        if wait > 0 and self._tasks:
            futures.wait([self._tasks[0][0]], timeout=wait)  # a failure re-raises below, in order
        for entry in [t for t in self._tasks if t[0].done()]:
            self._tasks.remove(entry)
            self.texts -= entry[1]
            yield entry[0].result()

    def shutdown(self, *, quick: bool) -> None:
        for pool in self._pools:
            pool.shutdown(wait=not quick, cancel_futures=True)
        for proc in self._procs:
            proc.close()


def _chunks(jobs: list[NewJob], size: int) -> Iterator[tuple[list[NewJob], int]]:
    """Consecutive whole jobs, about `size` texts a chunk."""
    chunk: list[NewJob] = []
    n = 0
    for job in jobs:
        chunk.append(job)
        n += len(job.texts)
        if n >= size:
            yield chunk, n
            chunk, n = [], 0
    if chunk:
        yield chunk, n
