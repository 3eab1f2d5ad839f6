"""The finishing thread's hand-off (narrow unit tests: a stub store records who wrote what).

A few interactive results are written at once on the calling thread (`INLINE_ROWS`), larger and
bulk ones on the `vecq-finish` thread; every write is reported once through `poll`, and an
inline write that meets Redis away is handed to the thread, which retries it."""

from __future__ import annotations

import threading
import time

import numpy as np
import redis

from vecq.worker.finisher import INLINE_ROWS, Finisher, Written
from vecq.worker.jobstore import Running
from vecq.worker.validation import WorkItem


class Store:
    """Records each finish call's thread and job ids; fails the first `failures` calls as a lost
    connection would."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.failures = failures

    def finish(self, records, *, now: float, now_iso: str) -> list[str]:  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Redis went away (test)")
        self.calls.append((threading.current_thread().name, [r.running.job_id for r in records]))
        return []


def item(job_id: str, lane: str, n: int) -> tuple[WorkItem, np.ndarray]:
    work = WorkItem(
        running=Running(job_id, lane, "ex1"), lane=lane, texts=["t"] * n, truncate=True, result_dtype="<f4",
        raw=True, result_ttl=60, timeout=60, started_at=time.time(), taken_at=time.monotonic(),
        queue_wait=None,
    )  # fmt: skip
    return work, np.ones((n, 4), dtype=np.float32)


def reports(finisher: Finisher, n: int) -> list[Written]:
    out = []
    deadline = time.monotonic() + 10
    while len(out) < n and time.monotonic() < deadline:
        report = finisher.poll(0.1)
        if report is not None:
            assert isinstance(report, Written), report
            out.append(report)
    return out


def test_small_interactive_results_are_written_at_once_on_the_calling_thread() -> None:
    store = Store()
    finisher = Finisher(store)  # type: ignore[arg-type]
    finisher.start()
    try:
        finisher.submit([item("query", "interactive", 1), item("corpus", "bulk", 3)])
        assert store.calls[0] == (threading.current_thread().name, ["query"])  # before submit returned
        finisher.submit([item("big", "interactive", INLINE_ROWS + 1)])  # one chunk, over the inline size
        got = reports(finisher, 3)
        assert [j for w in got for j in w.skipped] == [] and sum(w.jobs for w in got) == 3
        by_thread = {ids[0]: thread for thread, ids in store.calls}
        assert by_thread["big"] == by_thread["corpus"] == "vecq-finish"
        assert finisher.in_flight == 0 and finisher.texts_in_flight == 0
    finally:
        finisher.stop()


def test_an_inline_write_that_meets_redis_away_is_retried_by_the_thread_once() -> None:
    store = Store(failures=1)
    finisher = Finisher(store)  # type: ignore[arg-type]
    finisher.start()
    try:
        finisher.submit([item("query", "interactive", 1)])
        got = reports(finisher, 1)
        assert [w.jobs for w in got] == [1]
        assert store.calls == [("vecq-finish", ["query"])]  # written once, by the thread
        assert finisher.poll(0.3) is None and finisher.in_flight == 0
    finally:
        finisher.stop()
