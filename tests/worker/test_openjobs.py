"""Open jobs: each job's vectors in its own order, counts, and each job leaving exactly once."""

from __future__ import annotations

import numpy as np

from vecq.worker.openjobs import OpenJobs


class Item:
    """What OpenJobs reads of a WorkItem."""

    def __init__(self, n: int, lane: str = "bulk", timeout: int = 600, taken_at: float = 0.0) -> None:
        self.texts = ["t"] * n
        self.lane = lane
        self.timeout = timeout
        self.taken_at = taken_at
        self.dimensions: int | None = None  # Matryoshka size: None keeps the model's


def test_a_jobs_vectors_are_cut_to_its_dimensions() -> None:
    jobs = OpenJobs(dim=4)
    item = Item(2)
    item.dimensions = 3
    jobs.hold([item])  # type: ignore[list-item]
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    jobs.fill([(item, slice(0, 2), slice(0, 2))], vectors)  # type: ignore[list-item]
    ((done, out),) = jobs.take_done()
    assert done is item and out.flags.c_contiguous
    assert out.tolist() == [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0]]


def test_each_jobs_vectors_come_back_in_its_own_order() -> None:
    a, b = Item(3), Item(2)
    jobs = OpenJobs(dim=2)
    jobs.hold([a, b])
    jobs.fill([(b, [1], [0]), (a, [2, 0], [1, 2])], np.array([[11, 11], [2, 2], [0, 0]], dtype=np.float32))
    assert jobs.take_done() == []
    jobs.fill(
        [(a, slice(1, 2), slice(0, 1)), (b, slice(0, 1), slice(1, 2))],
        np.array([[1, 1], [10, 10]], dtype=np.float32),
    )
    done = jobs.take_done()
    assert [d[0] for d in done] == [a, b]
    np.testing.assert_array_equal(done[0][1], [[0, 0], [1, 1], [2, 2]])
    np.testing.assert_array_equal(done[1][1], [[10, 10], [11, 11]])
    assert len(jobs) == 0 and jobs.texts == 0 and jobs.idle


def test_counts_follow_holds_and_ends_by_lane() -> None:
    a, b, c = Item(3, "interactive"), Item(4), Item(5)
    jobs = OpenJobs(dim=1)
    jobs.hold([a, b, c])
    assert (jobs.texts, jobs.interactive_texts, len(jobs)) == (12, 3, 3)
    assert jobs.fail(a, "EngineError: x", "engine_error", retry=True)
    assert not jobs.fail(a, "again", "engine_error", retry=True)  # ends once
    assert jobs.drop(b) and not jobs.drop(b)
    assert (jobs.texts, jobs.interactive_texts, len(jobs)) == (5, 0, 1)
    failures, refusals = jobs.unwritten
    assert [(f.item, f.reason, f.retry) for f in failures] == [(a, "EngineError: x", True)] and refusals == []
    assert not jobs.idle  # a failure not yet written keeps the worker busy
    jobs.written()
    assert jobs.unwritten == ([], [])


def test_a_complete_job_cannot_fail_or_be_filled_again() -> None:
    """A done job waiting for the finishing thread is not failed by a late timeout, and rows of
    a job that already ended are dropped."""
    a = Item(1)
    jobs = OpenJobs(dim=1)
    jobs.hold([a])
    jobs.fill([(a, [0], [0])], np.array([[7]], dtype=np.float32))
    assert not jobs.fail(a, "JobTimeoutException", "timeout", retry=True)
    jobs.fill([(a, [0], [0])], np.array([[8]], dtype=np.float32))
    [(item, vectors)] = jobs.take_done()
    assert item is a and vectors.tolist() == [[7.0]] and jobs.unwritten == ([], [])


def test_overdue_jobs_are_the_unfinished_ones_past_their_own_timeout() -> None:
    slow, quick, done = Item(2, timeout=100), Item(2, timeout=10), Item(1, timeout=10)
    jobs = OpenJobs(dim=1)
    jobs.hold([slow, quick, done])
    jobs.fill([(done, slice(0, 1), slice(0, 1))], np.zeros((1, 1), dtype=np.float32))
    assert jobs.overdue(now=50.0) == [quick]
    assert jobs.overdue(now=101.0) == [slow, quick]
