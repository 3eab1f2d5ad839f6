"""The engine thread with an asynchronous engine (issue 14): batch k+1 starts before batch k is
collected, results come back in order and exact, and a batch that fails to start fails alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from vecq.engines.backends.null import NullEngine, null_vectors
from vecq.engines.base import Batch, Finished
from vecq.engines.shapes import ShapeSet
from vecq.engines.tokenizer import TextTokenizer
from vecq.worker.planner import PlannedBatch, Row
from vecq.worker.runner import Done, EngineRunner


class AsyncNull(NullEngine):
    """The null engine with a `start`, logging when each batch starts and is collected."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.log: list[tuple[str, int]] = []

    def start(self, batch: Batch):
        key = int(batch.input_ids[0, 1])
        if key == 666:
            raise RuntimeError("poisoned batch")
        self.log.append(("start", key))
        if key == 11:
            time.sleep(0.3)  # batch 12 is in the hand-off slot by the time 11 is on its way
        vectors = self.run(batch)
        engine = self

        class _Pending:
            def result(self) -> np.ndarray:
                engine.log.append(("collect", key))
                return Finished(vectors).result()

        return _Pending()


def _planned(key: int, shape) -> PlannedBatch:
    ids = np.array([101, key, 7, 102], dtype=np.int64)
    return PlannedBatch(shape, [Row(owner=key, index=0, ids=ids, since=0.0)])


def _started(engine_class, tiny_bert_dir: Path):  # type: ignore[no-untyped-def]
    """(engine, tokenizer, started runner, its one shape) for a 1 x 16 null engine class."""
    shapes = ShapeSet.grid((1,), (16,), max_seq_len=16)
    engine = engine_class(shapes=shapes, dim=8)
    tokenizer = TextTokenizer.from_dir(tiny_bert_dir, max_seq_len=16)
    runner = EngineRunner(engine, tokenizer)
    runner.start()
    return engine, tokenizer, runner, next(iter(shapes))


def test_batches_overlap_in_order_and_a_failed_start_fails_alone(tiny_bert_dir: Path) -> None:
    engine, tokenizer, runner, shape = _started(AsyncNull, tiny_bert_dir)
    keys = [11, 12, 666, 13, 14]
    for key in keys:
        deadline = time.monotonic() + 10
        while not runner.offer(_planned(key, shape)):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    done: list[Done] = []
    while len(done) < len(keys):
        item = runner.wait(10)
        assert isinstance(item, Done)
        done.append(item)
    runner.stop()
    by_key = {d.planned.rows[0].owner: d for d in done}
    assert by_key[666].error is not None and "poisoned batch" in by_key[666].error
    for key in (11, 12, 13, 14):
        batch = tokenizer.make_batch([by_key[key].planned.rows[0].ids], shape)
        want = null_vectors(batch.input_ids, batch.attention_mask, engine._freqs)
        np.testing.assert_array_equal(by_key[key].vectors, want)
    good = [d.planned.rows[0].owner for d in done if d.error is None]
    assert good == [11, 12, 13, 14]  # collected in the order they started
    collected = [k for what, k in engine.log if what == "collect"]
    assert collected == [11, 12, 13, 14]
    assert all(engine.log.index(("collect", k)) > engine.log.index(("start", k)) for k in collected)
    assert engine.log.index(("start", 12)) < engine.log.index(("collect", 11))  # overlapped


class SleepyNull(NullEngine):
    """The null engine, synchronous, taking 0.1 s per batch."""

    def run(self, batch: Batch) -> np.ndarray:
        time.sleep(0.1)
        return super().run(batch)


def test_busy_seconds_never_count_an_instant_twice(tiny_bert_dir: Path) -> None:
    """Batch k is collected after batch k+1 ran, so `seconds` of batches back to back overlap
    (about twice the engine's time); `busy` adds up to the time the engine worked, which the
    worker's capacity divides by (issue 15)."""
    shapes = ShapeSet.grid((1,), (16,), max_seq_len=16)
    runner = EngineRunner(
        SleepyNull(shapes=shapes, dim=8), TextTokenizer.from_dir(tiny_bert_dir, max_seq_len=16)
    )
    runner.start()
    shape = next(iter(shapes))
    start = time.perf_counter()
    for key in range(5):
        deadline = time.monotonic() + 10
        while not runner.offer(_planned(20 + key, shape)):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    done = [runner.wait(10) for _ in range(5)]
    wall = time.perf_counter() - start
    runner.stop()
    assert all(isinstance(d, Done) and d.error is None for d in done)
    busy = sum(d.busy for d in done)  # type: ignore[union-attr]
    seconds = sum(d.seconds for d in done)  # type: ignore[union-attr]
    assert 0.5 <= busy <= wall, (busy, wall)
    assert seconds >= 0.85, seconds  # the first four each spanned the run of the next one


class GatedNull(AsyncNull):
    """`AsyncNull` whose batch 23 starts only once `gate` is set."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gate = threading.Event()

    def start(self, batch: Batch):
        if int(batch.input_ids[0, 1]) == 23:
            assert self.gate.wait(10)
        return super().start(batch)


def test_an_idle_engine_starts_the_batch_before_offer_returns(tiny_bert_dir: Path, monkeypatch) -> None:
    """Issue 14's idle latency: handed to an idle asynchronous engine, a batch is started by the
    engine thread before `offer` returns (the caller's pass would otherwise hold the GIL while
    the engine thread waits to start it); handed to a busy engine, `offer` does not wait."""
    from vecq.worker import runner as runner_module

    monkeypatch.setattr(runner_module, "LAUNCH_WAIT_S", 10.0)  # no timing in the test: wait for it
    shapes = ShapeSet.grid((1,), (16,), max_seq_len=16)
    engine = GatedNull(shapes=shapes, dim=8)
    runner = EngineRunner(engine, TextTokenizer.from_dir(tiny_bert_dir, max_seq_len=16))
    runner.start()
    shape = next(iter(shapes))
    assert runner.offer(_planned(21, shape))
    assert engine.log[0] == ("start", 21)  # started on the engine thread before offer returned
    assert isinstance(runner.wait(10), Done)
    assert runner.offer(_planned(22, shape))  # idle again: started before offer returned
    assert ("start", 22) in engine.log
    before = time.monotonic()
    while not runner.offer(_planned(23, shape)):  # 22 not collected yet: the engine is busy
        time.sleep(0.001)
    assert time.monotonic() - before < 5  # not waited for: 23's start is held until the gate opens
    assert ("start", 23) not in engine.log
    engine.gate.set()
    assert [isinstance(runner.wait(10), Done) for _ in range(2)] == [True, True]
    runner.stop()


class PollingNull(AsyncNull):
    """`AsyncNull` whose pending batches say whether they are ready (as the GPU engine's do),
    noting the thread each batch started on; batch 31 never becomes ready (a hung device)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.threads: dict[int, int] = {}

    def start(self, batch: Batch):
        key = int(batch.input_ids[0, 1])
        self.threads[key] = threading.get_ident()
        pending = super().start(batch)
        pending.ready = lambda: key != 31  # type: ignore[attr-defined]
        return pending


def test_run_here_runs_on_the_callers_thread_and_a_hung_call_still_ends(tiny_bert_dir: Path) -> None:
    """Issue 14's idle latency: a lone batch run with `run_here` starts, is waited for and is
    collected on the calling thread, with the same vectors as through the engine thread; a
    call that never finishes raises `WorkerCrashed` after the limit (the watchdog's promise),
    and the engine is idle again afterwards."""
    import pytest

    from vecq.worker.errors import WorkerCrashed

    engine, tokenizer, runner, shape = _started(PollingNull, tiny_bert_dir)
    assert runner.runs_anywhere
    here = runner.run_here(_planned(30, shape), limit=10)
    assert engine.threads[30] == threading.get_ident()
    assert here.error is None and runner.busy_since is None
    assert runner.offer(_planned(32, shape))  # the same batch through the engine thread
    there = runner.wait(10)
    assert isinstance(there, Done) and there.error is None
    assert engine.threads[32] != threading.get_ident()
    batch = tokenizer.make_batch([_planned(30, shape).rows[0].ids], shape)
    want = null_vectors(batch.input_ids, batch.attention_mask, engine._freqs)
    np.testing.assert_array_equal(here.vectors, want)
    with pytest.raises(WorkerCrashed, match=r"engine_timeout=0\.05"):
        runner.run_here(_planned(31, shape), limit=0.05)
    assert runner.busy_since is None
    engine.thread_bound = True  # an engine tied to its thread (ORT's CUDA graphs) never runs here
    assert not EngineRunner(engine, tokenizer).runs_anywhere
    runner.stop()
