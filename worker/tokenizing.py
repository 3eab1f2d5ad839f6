"""Tokenizing on a thread of its own, each take's jobs one task, handed back in take order.

`tokenizers` releases the GIL, so tokenizing a take overlaps the main thread's Python (taking,
validating, writing back).  A tokenizer failure re-raises where its task is collected, in the
main thread, so the worker exits non-zero instead of leaving jobs that are never planned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .planner import Encoded, Encoder, NewJob, encode_jobs
from .validation import WorkItem


class Tokenizing:
    """Tasks in flight on the `vecq-tokenize` thread, oldest first."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vecq-tokenize")
        self._tasks: deque[tuple[Future[Encoded], int]] = deque()  # (task, its texts)
        self.texts = 0

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def submit(self, items: Sequence[WorkItem], *, now: float) -> None:
        if not items:
            return
        jobs = [NewJob(i, i.texts, i.lane, i.truncate) for i in items]
        texts = sum(len(i.texts) for i in items)
        self._tasks.append((self._pool.submit(encode_jobs, self.encoder, jobs, now=now), texts))
        self.texts += texts

    def ready(self, *, wait: bool) -> Iterator[Encoded]:
        """Finished tasks in take order; `wait`: for the oldest one, if it is still running."""
        while self._tasks and (wait or self._tasks[0][0].done()):
            task, texts = self._tasks.popleft()
            self.texts -= texts
            yield task.result()
            wait = False

    def shutdown(self, *, quick: bool) -> None:
        self._pool.shutdown(wait=not quick, cancel_futures=True)
