"""BulkSubmitter: 10k texts in chunks, the window bound, resume with skip, Redis left empty."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable

import numpy as np
import pytest
import redis

from vecq.producer import BadRequest, BulkSubmitter, Client, JobFailed, JobTimeout, MsgpackSerializer
from vecq.producer.results import last_line

N_TEXTS = 10_000
CHUNK = 256
N_CHUNKS = -(-N_TEXTS // CHUNK)  # 40


def corpus(n: int = N_TEXTS) -> list[str]:
    return [f"document {i}: " + "word " * (i % 37) for i in range(n)]


def run_with_worker(
    submitter: BulkSubmitter,
    texts: Iterable[str],
    conn: redis.Redis,
    drain,  # type: ignore[no-untyped-def]
    *,
    skip: Collection[int] = (),
    stop_after: int | None = None,
) -> tuple[dict[int, np.ndarray], int, BaseException | None]:
    """Consume `run()` on a thread while a stock rq worker drains in bursts on this one.

    Returns the yielded chunks, the most vecq-bulk job hashes ever seen in Redis at once, and
    the error `run()` raised, if any.
    """
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for index, vectors in submitter.run(texts, skip=skip):
                assert index not in got, f"chunk {index} yielded twice"
                got[index] = vectors
                if stop_after is not None and len(got) >= stop_after:
                    break
        except BaseException as exc:
            errors.append(exc)

    most = 0

    def probe() -> None:
        nonlocal most
        most = max(most, len(conn.keys(f"rq:job:vecq-bulk-{submitter.run_id}-*")))

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        drain(lanes=("bulk",), before_job=probe)
        time.sleep(0.002)
    thread.join(5)
    return got, most, errors[0] if errors else None


def assert_chunks_equal(got: dict[int, np.ndarray], texts: list[str], expected, chunk: int = CHUNK) -> None:  # type: ignore[no-untyped-def]
    whole = expected(texts)
    for index, vectors in got.items():
        np.testing.assert_array_equal(vectors, whole[index * chunk : (index + 1) * chunk])


def test_ten_thousand_texts_windowed(redis_url: str, redis_conn: redis.Redis, drain, expected) -> None:
    texts = corpus()
    with Client(redis_url) as client:
        bulk = BulkSubmitter(client, run_id="run-a", chunk_size=CHUNK, window=4 * CHUNK)
        got, most_jobs, error = run_with_worker(bulk, iter(texts), redis_conn, drain)
    assert error is None
    assert sorted(got) == list(range(N_CHUNKS))
    assert got[N_CHUNKS - 1].shape == (N_TEXTS - (N_CHUNKS - 1) * CHUNK, 384)
    assert_chunks_equal(got, texts, expected)
    assert 1 <= most_jobs <= 4  # the window: never more than 4 chunks of 256 in Redis at once
    assert bulk.stats.max_in_flight_texts == 4 * CHUNK
    assert (bulk.stats.chunks_enqueued, bulk.stats.chunks_done, bulk.stats.texts_done) == (
        N_CHUNKS,
        N_CHUNKS,
        N_TEXTS,
    )
    # Every job, result and registry entry is gone once yielded: Redis stays bounded.
    assert redis_conn.keys("rq:job:*") == []
    assert redis_conn.keys("rq:results:*") == []
    assert redis_conn.zcard("rq:finished:vecq.all-minilm-l6-v2.bulk") == 0


def test_resume_skips_done_chunks_and_adopts_in_flight_ones(
    redis_url: str, redis_conn: redis.Redis, drain, expected
) -> None:
    texts = corpus(3000)  # 12 chunks
    with Client(redis_url) as client:
        first = BulkSubmitter(client, run_id="run-b", chunk_size=CHUNK, window=3 * CHUNK)
        got1, _, error = run_with_worker(first, texts, redis_conn, drain, stop_after=4)
        assert error is None and len(got1) == 4
        left = {key.decode() for key in redis_conn.keys("rq:job:vecq-bulk-run-b-*")}
        assert 1 <= len(left) <= 3  # in flight when the consumer stopped: kept for the re-run

        second = BulkSubmitter(client, run_id="run-b", chunk_size=CHUNK, window=3 * CHUNK)
        got2, _, error = run_with_worker(second, texts, redis_conn, drain, skip=set(got1))
    assert error is None
    assert set(got1).isdisjoint(got2)
    assert sorted({*got1, *got2}) == list(range(12))
    assert_chunks_equal({**got1, **got2}, texts, expected)
    assert second.stats.chunks_adopted == len(left)
    # No chunk was enqueued twice across the two runs.
    assert first.stats.chunks_enqueued + second.stats.chunks_enqueued == 12
    assert redis_conn.keys("rq:job:*") == [] and redis_conn.keys("rq:results:*") == []


def test_failed_chunk_raises_with_its_index(redis_url: str, redis_conn: redis.Redis, drain) -> None:
    texts = ["short"] * 10 + ["word " * 2000] + ["short"] * 9  # text 10 is over 256 tokens
    with Client(redis_url) as client:
        bulk = BulkSubmitter(client, run_id="run-c", chunk_size=5, window=5, truncate=False)
        got, _, error = run_with_worker(bulk, texts, redis_conn, drain)
    assert sorted(got) == [0, 1]
    assert isinstance(error, JobFailed)
    assert (error.chunk, error.job_id) == (2, "vecq-bulk-run-c-00000002")
    from rq.job import Job

    failed = Job.fetch("vecq-bulk-run-c-00000002", connection=redis_conn, serializer=MsgpackSerializer)
    reason = last_line(failed.latest_result().exc_string)
    assert error.reason == reason
    assert str(error) == f"chunk 2 (job vecq-bulk-run-c-00000002) failed: {reason}"


def test_rerun_recomputes_a_failed_chunk(redis_url: str, redis_conn: redis.Redis, drain, expected) -> None:
    texts = ["a", "b", "c", "d"]
    with Client(redis_url) as client:
        bad = BulkSubmitter(client, run_id="run-d", model="other-model", chunk_size=2, window=2)
        other = lambda lanes, before_job: drain("other-model", lanes, before_job)  # noqa: E731
        _, _, error = run_with_worker(bad, texts, redis_conn, other)
        assert isinstance(error, JobFailed) and error.chunk == 0
        assert redis_conn.zcard("rq:failed:vecq.other-model.bulk") == 1
        # The same run id with the right model: the failed chunk is dropped and computed again.
        good = BulkSubmitter(client, run_id="run-d", chunk_size=2, window=4)
        got, _, error = run_with_worker(good, texts, redis_conn, drain)
    assert error is None
    assert sorted(got) == [0, 1]
    assert_chunks_equal(got, texts, expected, chunk=2)
    assert good.stats.chunks_enqueued == 2
    assert redis_conn.zcard("rq:failed:vecq.other-model.bulk") == 0
    assert redis_conn.keys("rq:job:*") == [] and redis_conn.keys("rq:results:*") == []


def test_arguments_are_checked(redis_url: str) -> None:
    with Client(redis_url) as client:
        with pytest.raises(BadRequest, match=r"^run_id: 'a b' must be 1-80 characters"):
            BulkSubmitter(client, run_id="a b")
        with pytest.raises(BadRequest, match=r"^chunk_size: 5000 is not in 1..4096$"):
            BulkSubmitter(client, run_id="r", chunk_size=5000)
        with pytest.raises(BadRequest, match=r"^window: 100 texts is smaller than one chunk \(256\)$"):
            BulkSubmitter(client, run_id="r", window=100)
        assert BulkSubmitter(client, run_id="r").job_id(7) == "vecq-bulk-r-00000007"


def test_stale_result_without_its_job_is_not_trusted(
    redis_url: str, redis_conn: redis.Redis, drain, expected
) -> None:
    """A result stream whose job hash expired (e.g. a ttl'd job) is dropped, the chunk redone."""
    redis_conn.xadd("rq:results:vecq-bulk-run-e-00000000", {"type": 2, "worker_name": "old"})
    with Client(redis_url) as client:
        bulk = BulkSubmitter(client, run_id="run-e", chunk_size=2, window=2)
        got, _, error = run_with_worker(bulk, ["p", "q"], redis_conn, drain)
    assert error is None
    np.testing.assert_array_equal(got[0], expected(["p", "q"]))
    assert bulk.stats.chunks_enqueued == 1


def test_first_window_is_submitted_in_a_ramp(redis_url: str, redis_conn: redis.Redis) -> None:
    """A worker gets the first chunks at once: the first submit holds two chunks, each later one
    at most twice the last, without waiting for a result, until the window is full."""
    sizes: list[int] = []

    class Recording(BulkSubmitter):
        def _submit(self, batch, flight) -> None:  # type: ignore[no-untyped-def]
            sizes.append(len(batch))
            super()._submit(batch, flight)

    with Client(redis_url) as client:
        submitter = Recording(
            client, run_id="ramp", model="m", chunk_size=CHUNK, window=32 * CHUNK, stall_timeout=2
        )
        thread = threading.Thread(target=lambda: _first(submitter), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while sum(sizes) < 32 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sizes == [2, 4, 8, 16, 2], sizes  # the window (32 chunks) full, then no result: wait


def _first(submitter: BulkSubmitter) -> None:
    """Run until the first result (none comes: no worker) ends the run by its stall timeout."""
    with pytest.raises(JobTimeout):
        next(iter(submitter.run(corpus())), None)
