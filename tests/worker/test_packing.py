"""The token planner of packing engines: pure logic, then through a real worker and Redis."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from rq.results import Result

from vecq.engines import Embedder
from vecq.engines.backends.null import NullEngine
from vecq.engines.base import TokenBatch, packs
from vecq.engines.tokenizer import Tokenized, flatten
from vecq.worker.packing import PackedPlan, Part, TokenPlanner
from vecq.worker.planner import Encoded, NewJob
from vecq.worker.runner import EngineRunner

from .conftest import BULK, enqueue, result_of, run, vectors_of

WAIT = 0.005


def toks(lengths: list[int], base: int = 0) -> Tokenized:
    """Texts of the given token counts, each id unique (base + 100 * text + position)."""
    return flatten([[base + 100 * i + k for k in range(n)] for i, n in enumerate(lengths)])


def encoded(owner: str, lengths: list[int], lane: str = "interactive", since: float = 0.0, base: int = 0):
    job = NewJob(owner, ["t"] * len(lengths), lane)
    return Encoded([(job, toks(lengths, base))], [], since), toks(lengths, base)


def planner(budget: int = 16, max_rows: int = 8, buckets=None) -> TokenPlanner:
    return TokenPlanner(budget=budget, max_rows=max_rows, max_wait_s=WAIT, buckets=buckets)


def add(p: TokenPlanner, owner: str, lengths: list[int], **kw) -> Tokenized:
    enc, tok = encoded(owner, lengths, **kw)
    assert p.add_encoded(enc) == []
    return tok


def drain(p: TokenPlanner, now: float = 0.0) -> list[PackedPlan]:
    out = []
    while (b := p.next_batch(now, flush=True)) is not None:
        out.append(b)
    return out


def shape(batch: PackedPlan) -> list[tuple[str, int, int]]:
    """(owner, first, texts) of each part."""
    return [(part.owner, part.first, part.texts) for part in batch.parts]


def check_placements(batches: list[PackedPlan], jobs: dict[str, Tokenized]) -> None:
    """Every text of every job lands exactly once, and each placement's ids are that text's."""
    seen: dict[str, list[int]] = {o: [] for o in jobs}
    for b in batches:
        tb = b.inputs(None)
        offsets = np.concatenate([[0], np.cumsum(tb.lengths)])
        rows = np.arange(b.texts)
        assert sorted(i for _, _, src in b.placements() for i in rows[src]) == list(range(b.texts))
        for owner, dst, src in b.placements():
            seen[owner] += list(range(len(jobs[owner]))[dst])
            ids = tb.ids[offsets[src.start] : offsets[src.stop]]
            np.testing.assert_array_equal(ids, jobs[owner].slice(dst.start, dst.stop).flat)
    # sorted, so a text placed twice (or never) shows as a mismatch
    assert {o: sorted(v) for o, v in seen.items()} == {o: list(range(len(t))) for o, t in jobs.items()}


# --- TokenPlanner -------------------------------------------------------------------------------
def test_full_lane_goes_at_once_in_arrival_order_split_at_the_budget() -> None:
    """A full buffer must not wait; a job cut at the budget goes on with the right text index."""
    p = planner(budget=16)
    jobs = {"a": add(p, "a", [5, 5]), "b": add(p, "b", [4, 4, 4], base=10_000)}
    first = p.next_batch(0.0)  # not due yet, but 22 tokens >= 16
    assert first is not None and shape(first) == [("a", 0, 2), ("b", 0, 1)] and first.tokens == 14
    assert p.pending == 2 and p.next_batch(0.0) is None  # the rest (8 tokens) waits
    rest = p.next_batch(WAIT)
    assert rest is not None and shape(rest) == [("b", 1, 2)] and p.pending == 0
    check_placements([first, rest], jobs)


def test_many_jobs_each_text_placed_once_every_batch_within_the_budget() -> None:
    """The invariant the worker's output arrays rely on, over many splits."""
    rng = np.random.default_rng(0)
    p = planner(budget=64, max_rows=8)
    jobs = {}
    for j in range(40):
        lengths = [int(n) for n in rng.integers(2, 30, size=int(rng.integers(1, 12)))]
        jobs[f"j{j}"] = add(p, f"j{j}", lengths, lane=("interactive", "bulk")[j % 2], base=j * 10_000)
    batches = drain(p)
    assert all(b.texts <= 8 for b in batches)
    assert all(b.tokens <= min(64, b.bucket) for b in batches)
    check_placements(batches, jobs)
    assert p.pending == 0


def test_partial_batch_waits_max_wait_or_goes_on_flush() -> None:
    """A lone text waits for batch-mates only up to max_wait."""
    p = planner(budget=64)
    add(p, "a", [3, 3], since=10.0)
    assert p.next_batch(10.0 + WAIT / 2) is None
    assert p.next_deadline() == pytest.approx(10.0 + WAIT)
    assert p.next_batch(10.0, flush=True) is not None and p.next_deadline() is None
    add(p, "b", [3], since=20.0)
    batch = p.next_batch(20.0 + 2 * WAIT)
    assert batch is not None and shape(batch) == [("b", 0, 1)]


def test_max_rows_caps_texts_per_batch() -> None:
    """Row cap splits a job of many short texts even far under the token budget."""
    p = planner(budget=1000, max_rows=4)
    jobs = {"a": add(p, "a", [2] * 10)}
    first = p.next_batch(0.0)  # 10 rows >= max_rows: full
    assert first is not None and shape(first) == [("a", 0, 4)]
    rest = drain(p)
    assert [shape(b) for b in rest] == [[("a", 4, 4)], [("a", 8, 2)]]
    check_placements([first, *rest], jobs)


def test_interactive_before_bulk() -> None:
    """A due interactive batch goes before an older full bulk lane."""
    p = planner(budget=16, buckets=[8])
    add(p, "bulk", [4] * 8, lane="bulk", since=0.0)
    add(p, "query", [8], since=0.5)
    first = p.next_batch(1.0)
    assert first is not None and shape(first) == [("query", 0, 1)] and first.bucket == 8
    assert first.interactive and first.label == "packed8" and first.capacity == (1, 8)
    second = p.next_batch(1.0)
    assert second is not None and not second.interactive and shape(second) == [("bulk", 0, 4)]


def test_bulk_batches_shrink_while_queries_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query waits behind the bulk batches already on the device: while queries keep coming
    those are cut smaller; once none came for MIXED_WINDOW_S, bulk gets the whole budget back."""
    from vecq.worker import packing

    monkeypatch.setattr(packing, "MIXED_BULK_TOKENS", 8)
    p = planner(budget=16)
    add(p, "bulk", [4] * 12, lane="bulk", since=0.0)
    assert p.lane_budget("bulk", 1.0) == 16
    add(p, "query", [2], since=1.0)
    first = p.next_batch(1.5)
    assert first is not None and shape(first) == [("query", 0, 1), ("bulk", 0, 3)]  # its bucket: 16
    second = p.next_batch(1.5)
    assert second is not None and second.tokens == 8  # mixed: the smaller cut
    assert p.lane_budget("interactive", 1.5) == 16
    later = 1.0 + packing.MIXED_WINDOW_S
    third = p.next_batch(later)
    assert third is not None and third.tokens == 16  # bulk alone again


def test_due_interactive_batch_topped_up_with_bulk_to_its_bucket() -> None:
    """Room left in the buffer the batch runs in is computed anyway, so bulk texts fill it."""
    p = planner(budget=256, buckets=[16, 64])
    assert p.buckets == [16, 64, 256]
    jobs = {"bulk": add(p, "bulk", [3] * 5, lane="bulk"), "q": add(p, "q", [10], base=10_000)}
    batch = p.next_batch(1.0)
    assert batch is not None and shape(batch) == [("q", 0, 1), ("bulk", 0, 2)]
    assert batch.tokens == 16 and batch.bucket == 16
    rest = drain(p, 1.0)
    assert [shape(b) for b in rest] == [[("bulk", 2, 3)]]
    check_placements([batch, *rest], jobs)


def test_top_up_never_goes_beyond_the_bucket_or_budget() -> None:
    """A top-up that oversteps makes the batch run in a bigger buffer (or be refused)."""
    p = planner(budget=256, buckets=[16])
    add(p, "bulk", [100], lane="bulk")
    add(p, "q", [10])
    batch = p.next_batch(1.0)
    assert batch is not None and shape(batch) == [("q", 0, 1)] and batch.tokens <= batch.bucket
    p = planner(budget=256)
    add(p, "bulk", [200], lane="bulk")
    add(p, "q", [200])
    batch = p.next_batch(1.0)
    assert batch is not None and batch.tokens <= 256


def test_text_longer_than_the_budget_goes_alone() -> None:
    """Progress: an over-long first text is never stuck; but it never joins a batch that has one."""
    p = planner(budget=16)
    add(p, "a", [5])
    add(p, "b", [20, 3])
    assert shape(p.next_batch(0.0)) == [("a", 0, 1)]
    alone = p.next_batch(0.0)
    assert shape(alone) == [("b", 0, 1)] and alone.tokens == 20 and alone.bucket == 16
    assert shape(p.next_batch(0.0, flush=True)) == [("b", 1, 1)] and p.pending == 0


def test_dropped_owner_is_skipped_and_pending_drains_to_zero() -> None:
    """A failed job's texts must not take engine time."""
    p = planner(budget=16)
    for owner in "abc":
        add(p, owner, [3, 3])
    add(p, "d", [3], lane="bulk")
    p.drop("b")
    p.drop("d")
    assert not p.waiting("bulk") and p.waiting("interactive")
    batches = drain(p)
    assert {o for b in batches for o in b.owners} == {"a", "c"} and sum(b.texts for b in batches) == 4
    assert p.pending == 0 and p.next_deadline() is None
    p.forget_dropped()
    add(p, "b", [3])  # the owner's drop is forgotten once nothing pending can refer to it
    assert [b.owners for b in drain(p)] == [["b"]]


def test_retry_isolated_one_owner_per_batch_ahead_of_new_work() -> None:
    """After a mixed batch fails, each job runs alone so a poison text fails only its own job."""
    p = planner(budget=64)
    add(p, "a", [3, 3])
    add(p, "b", [4], lane="bulk")
    failed = p.next_batch(0.0, flush=True)
    assert failed is not None and failed.owners == ["a", "b"] and not failed.isolated
    add(p, "c", [5])
    p.retry_isolated(failed)
    assert p.pending == 4 and p.next_deadline() == 0.0
    again = [p.next_batch(0.0) for _ in range(2)]  # due at once, not waiting max_wait
    assert [(shape(b), b.isolated) for b in again] == [([("a", 0, 2)], True), ([("b", 0, 1)], True)]
    assert [shape(b) for b in drain(p)] == [[("c", 0, 1)]] and p.pending == 0


def test_put_back_puts_a_batch_first_again() -> None:
    """A bulk batch bumped from the hand-off slot loses nothing and keeps its place."""
    p = planner(budget=16)
    jobs = {"a": add(p, "a", [6, 6], lane="bulk"), "b": add(p, "b", [6, 6], lane="bulk", base=10_000)}
    taken = p.next_batch(0.0)
    assert taken is not None and shape(taken) == [("a", 0, 2)] and p.pending == 2
    p.put_back(taken)
    assert p.pending == 4
    batches = drain(p)
    assert [shape(b) for b in batches] == [[("a", 0, 2)], [("b", 0, 2)]]
    check_placements(batches, jobs)
    iso = PackedPlan([Part("x", 3, toks([2]), 0.0, "bulk")], 16, isolated=True)
    p.put_back(iso)
    assert p.pending == 1 and p.next_batch(0.0) == iso


def test_inputs_concatenate_the_parts_ids() -> None:
    """One flat token batch, nothing padded; the tokenizer is not needed."""
    a, b = toks([2, 3]), toks([4], base=500)
    plan = PackedPlan([Part("a", 0, a, 0.0, "bulk"), Part("b", 0, b, 0.0, "interactive")], 16)
    tb = plan.inputs(None)
    assert isinstance(tb, TokenBatch) and tb.rows == 3 and tb.real_tokens == 9
    np.testing.assert_array_equal(tb.ids, np.concatenate([a.flat, b.flat]))
    np.testing.assert_array_equal(tb.lengths, [2, 3, 4])
    assert plan.placements() == [("a", slice(0, 2), slice(0, 2)), ("b", slice(0, 1), slice(2, 3))]
    np.testing.assert_array_equal(PackedPlan([plan.parts[0]], 16).inputs(None).ids, a.flat)


# --- EngineRunner.offer_first -------------------------------------------------------------------
def _plan(lane: str) -> PackedPlan:
    return PackedPlan([Part(lane, 0, toks([2]), 0.0, lane)], 16)


def test_offer_first_bumps_only_a_bulk_batch_from_the_slot() -> None:
    """A query may take a waiting bulk batch's place, never an interactive one's."""
    runner = EngineRunner(NullEngine(shapes=Embedder.load(backend="null").shapes, dim=4), None)
    bulk, query, query2 = _plan("bulk"), _plan("interactive"), _plan("interactive")
    assert runner.offer_first(query) == (True, None) and runner.in_flight == 1  # empty slot
    assert runner.handoff.get(block=False) is query
    assert runner.offer(bulk) and runner.in_flight == 2
    assert runner.offer_first(query) == (True, bulk) and runner.in_flight == 2
    assert runner.offer_first(query2) == (False, None) and runner.in_flight == 2
    assert runner.handoff.get(block=False) is query and runner.slot_free


# --- through a real worker --------------------------------------------------------------------
class PoisonNull(NullEngine):
    """The packing null engine, except that a batch holding the poison token fails."""

    poison_id = -1

    def run(self, batch):
        if isinstance(batch, TokenBatch) and (batch.ids == self.poison_id).any():
            raise RuntimeError("device-side assert triggered")
        return super().run(batch)


def packing_embedder(engine_class=NullEngine, budget: int = 256) -> Embedder:
    emb = Embedder.load(backend="null")
    emb.engine = engine_class(shapes=emb.engine.shapes, dim=emb.dim, token_budget=budget)
    return emb


def texts_of(j: int) -> list[str]:
    return [f"text {i} of job {j} " + "word " * (i * 13 % 90) for i in range(j % 9 + 1)]


def test_embed_on_a_packing_engine_equals_the_padded_one(null_embedder) -> None:
    """`Embedder.embed` cuts token batches for a packing engine; vectors must not change."""
    emb = packing_embedder()
    assert packs(emb.engine) and not packs(null_embedder.engine)
    texts = [t for j in range(40) for t in texts_of(j)] + ["word " * 400]  # one truncated to 256
    np.testing.assert_array_equal(emb.embed(texts), null_embedder.embed(texts))
    assert emb.engine.calls > 10  # split over many token batches


def test_packing_worker_serves_both_lanes_exactly(redis_conn, make_worker, null_embedder) -> None:
    """Jobs split across token batches still get every vector, in their own order."""
    batches = [texts_of(j) for j in range(90)]
    jobs = enqueue(redis_conn, batches[:50]) + enqueue(redis_conn, batches[50:], queue=BULK, lane="bulk")
    emb = packing_embedder()
    worker = make_worker(emb)
    planner = worker.serving.planner
    assert isinstance(planner, TokenPlanner) and planner.budget == 256
    run(worker)
    for job, texts in zip(jobs, batches, strict=True):
        got = vectors_of(redis_conn, job.id)
        assert got.dtype == np.float32 and got.shape == (len(texts), null_embedder.dim)
        np.testing.assert_array_equal(got, null_embedder.embed(texts))
    assert worker.finished_jobs == 90 and worker.texts_done == sum(map(len, batches))
    tokens = int(null_embedder.tokenizer.encode([t for b in batches for t in b]).lengths.sum())
    assert emb.engine.calls >= -(-tokens // 256) and planner.pending == 0


def test_packing_worker_never_hands_the_engine_an_over_budget_batch(redis_conn, make_worker, caplog) -> None:
    """Every batch the planner cuts must fit the engine: a refused one costs a call per job."""
    enqueue(redis_conn, [texts_of(j) for j in range(30)], queue=BULK, lane="bulk")
    enqueue(redis_conn, [texts_of(j) for j in range(30, 60)])
    caplog.set_level("WARNING", logger="vecq.worker.runner")
    run(make_worker(packing_embedder()))
    assert not [r for r in caplog.records if "ShapeError" in r.getMessage()]


def test_packing_worker_poison_text_fails_only_its_job(redis_conn, make_worker, null_embedder) -> None:
    """A mixed token batch that fails is re-run job by job; only the poisoned job fails."""
    emb = packing_embedder(PoisonNull)
    emb.engine.poison_id = int(null_embedder.tokenizer.encode(["xylophone"]).ids[0][1])
    batches = [[f"ordinary text {i}", f"another one {i}"] for i in range(30)]
    batches[17] = ["ordinary", "a xylophone here"]
    jobs = enqueue(redis_conn, batches[:20], retries=None)
    jobs += enqueue(redis_conn, batches[20:], queue=BULK, lane="bulk", retries=None)
    worker = make_worker(emb, max_wait_ms=50)
    run(worker)
    for i, job in enumerate(jobs):
        if i != 17:
            np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(batches[i]))
    res = result_of(redis_conn, jobs[17].id)
    assert res is not None and res.type == Result.Type.FAILED
    assert res.exc_string == "EngineError: RuntimeError: device-side assert triggered"
    assert worker.finished_jobs == 29 and worker.failed_jobs == 1


class _Ready:
    """A started batch that is already done, and says so (`ready()`), as the GPU engine's do."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def ready(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self.vectors


class AsyncPackingNull(PoisonNull):
    """The packing null engine with `start`, as the GPU engine has, noting the thread each
    batch started on."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.threads: list[int] = []

    def start(self, batch):
        self.threads.append(threading.get_ident())
        return _Ready(self.run(batch))


def test_lone_queries_run_on_the_main_thread_and_a_bad_one_fails_alone(
    redis_conn, make_worker, null_embedder
) -> None:
    """Issue 14's idle latency: on an idle worker a lone interactive batch runs on the main
    thread (`EngineRunner.run_here`), not crossing to the engine thread; three queries taken
    together, one of them poisoned, run there as one batch, then each alone (through the engine
    thread while others wait), and only the bad one fails; a bulk job goes through the engine
    thread, with exact vectors."""
    emb = packing_embedder(AsyncPackingNull)
    emb.engine.poison_id = int(null_embedder.tokenizer.encode(["xylophone"]).ids[0][1])
    queries = [["a lone query"], ["a xylophone query"], ["another query"]]
    jobs = enqueue(redis_conn, queries, retries=None)
    worker = make_worker(emb)
    run(worker)
    engine_thread = worker.serving.runner._thread.ident
    assert len(emb.engine.threads) == 4 and emb.engine.threads[0] != engine_thread  # the three: main thread
    for i in (0, 2):
        np.testing.assert_array_equal(vectors_of(redis_conn, jobs[i].id), null_embedder.embed(queries[i]))
    res = result_of(redis_conn, jobs[1].id)
    assert res is not None and res.type == Result.Type.FAILED
    assert res.exc_string == "EngineError: RuntimeError: device-side assert triggered"
    assert worker.finished_jobs == 2 and worker.failed_jobs == 1
    texts = [f"bulk text {i}" for i in range(40)]
    bulk = enqueue(redis_conn, [texts], queue=BULK, lane="bulk")
    emb.engine.threads.clear()
    worker = make_worker(emb)
    run(worker)
    np.testing.assert_array_equal(vectors_of(redis_conn, bulk[0].id), null_embedder.embed(texts))
    assert set(emb.engine.threads) == {worker.serving.runner._thread.ident}
