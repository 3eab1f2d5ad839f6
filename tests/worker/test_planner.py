"""The planner: pure logic, no Redis."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vecq.engines.errors import TextTooLong
from vecq.engines.shapes import Shape, ShapeSet
from vecq.engines.tokenizer import flatten
from vecq.worker.planner import NewJob, Planner

SHAPES = ShapeSet.grid((1, 2, 4, 8), (8, 16, 32), max_seq_len=32)
WAIT = 0.005


class WordEncoder:
    """One token per word plus [CLS]/[SEP]; refuses texts over 32 tokens when not truncating."""

    def encode(self, texts, *, truncate=True):
        ids = []
        for i, t in enumerate(texts):
            n = len(t.split()) + 2
            if n > 32 and not truncate:
                raise TextTooLong(f"texts[{i}]: longer than the model's max of 32 tokens")
            ids.append(np.arange(1, min(n, 32) + 1, dtype=np.int64))
        return flatten(ids)


def planner() -> Planner:
    return Planner(SHAPES, WordEncoder(), max_wait_s=WAIT)


def words(n: int) -> str:
    return " ".join(["w"] * n)


def drain(p: Planner, now: float):
    out = []
    while (b := p.next_batch(now, flush=True)) is not None:
        out.append(b)
    return out


def test_full_batch_goes_at_once() -> None:
    p = planner()
    p.add([NewJob("a", [words(3)] * 8)], now=0.0)
    batch = p.next_batch(0.0)
    assert batch is not None and batch.shape == Shape(8, 8) and len(batch.rows) == 8
    assert p.next_batch(0.0) is None and p.pending == 0


def test_partial_batch_waits_for_max_wait_then_pads_to_nearest_shape() -> None:
    p = planner()
    p.add([NewJob("a", [words(3)] * 3)], now=10.0)
    assert p.next_batch(10.0 + WAIT / 2) is None
    assert p.next_deadline() == pytest.approx(10.0 + WAIT)
    batch = p.next_batch(10.0 + WAIT)
    assert batch is not None and batch.shape == Shape(4, 8) and len(batch.rows) == 3


def test_spare_rows_carry_shorter_waiting_texts() -> None:
    p = planner()
    p.add([NewJob("long", [words(20)] * 3)], now=0.0)
    p.add([NewJob("short", [words(2)] * 5)], now=0.5)
    batch = p.next_batch(1.0)  # both due; the oldest (long) is cut first, its spare row takes a short text
    assert batch is not None and batch.shape == Shape(4, 32)
    assert [r.owner for r in batch.rows] == ["long", "long", "long", "short"]
    rest = drain(p, 1.0)
    assert [(b.shape, len(b.rows)) for b in rest] == [(Shape(4, 8), 4)]


def test_due_remainders_of_near_lengths_go_as_one_batch_on_fine_cpu_shapes() -> None:
    shapes = ShapeSet.for_cpu(max_seq_len=32)  # batches 1..8, seq_len step 2
    p = Planner(shapes, WordEncoder(), max_wait_s=WAIT)
    # 3 + 3 + 2 rows in neighbouring buckets (32, 30, 28 tokens), 26 tokens (under 7/8 of 32), 5 tokens
    lengths = [32] * 3 + [30] * 3 + [28] * 2 + [26] + [5] * 2
    p.add([NewJob("a", [words(n - 2) for n in lengths])], now=0.0)
    first = p.next_batch(1.0)
    assert first is not None and first.shape == Shape(8, 32)
    assert sorted(len(r.ids) for r in first.rows) == sorted(lengths[:8])
    rest = drain(p, 1.0)
    assert [(b.shape, len(b.rows)) for b in rest] == [(Shape(1, 26), 1), (Shape(2, 6), 2)]


def test_interactive_goes_before_bulk() -> None:
    p = planner()
    p.add([NewJob("bulk", [words(3)] * 8, lane="bulk")], now=0.0)
    p.add([NewJob("web", [words(3)] * 8, lane="interactive")], now=1.0)
    assert p.next_batch(2.0).rows[0].owner == "web"
    assert p.next_batch(2.0).rows[0].owner == "bulk"


def test_only_declared_shapes_and_every_text_exactly_once() -> None:
    rng = random.Random(7)
    p = planner()
    jobs = [
        NewJob(
            f"j{k}",
            [words(rng.randint(0, 40)) for _ in range(rng.randint(1, 20))],
            lane=rng.choice(["interactive", "bulk"]),
        )
        for k in range(60)
    ]
    p.add(jobs, now=0.0)
    seen = []
    for b in drain(p, 0.0):
        assert b.shape in SHAPES and 0 < len(b.rows) <= b.shape.batch
        assert all(len(r.ids) <= b.shape.seq_len for r in b.rows)
        seen += [(r.owner, r.index) for r in b.rows]
    expected = [(j.owner, i) for j in jobs for i in range(len(j.texts))]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


def test_over_long_text_without_truncation_refuses_only_its_job() -> None:
    p = planner()
    refused = p.add(
        [
            NewJob("ok", ["a b"]),
            NewJob("long", ["x " * 40], truncate=False),
            NewJob("cut", ["x " * 40], truncate=True),
        ],
        now=0.0,
    )
    assert refused == [("long", "TextTooLong: texts[0]: longer than the model's max of 32 tokens")]
    assert sorted(r.owner for b in drain(p, 0.0) for r in b.rows) == ["cut", "ok"]


def test_failed_mixed_batch_is_retried_one_owner_per_batch() -> None:
    p = planner()
    p.add([NewJob("a", [words(3)] * 4), NewJob("b", [words(3)] * 4)], now=0.0)
    batch = p.next_batch(0.0)
    assert batch is not None and len(batch.owners) == 2
    p.retry_isolated(batch)
    first, second = p.next_batch(0.0), p.next_batch(0.0)
    assert first.isolated and second.isolated
    assert first.owners == ["a"] and second.owners == ["b"] and first.shape == Shape(4, 8)
    assert p.next_batch(0.0) is None and p.pending == 0


def test_dropped_owner_rows_never_come_back() -> None:
    p = planner()
    p.add([NewJob("gone", [words(3)] * 5), NewJob("kept", [words(3)] * 2)], now=0.0)
    p.drop("gone")
    rows = [r for b in drain(p, 0.0) for r in b.rows]
    assert [r.owner for r in rows] == ["kept", "kept"] and p.pending == 0


def test_a_due_interactive_text_goes_before_full_bulk_batches() -> None:
    """Under bulk load every pass finds full bulk batches; a lone interactive text that has
    waited max_wait must still go next, not after all of them (seconds on a GPU)."""
    p = planner()
    p.add([NewJob("bulk", [words(3)] * 64, lane="bulk")], now=0.0)
    p.add([NewJob("query", [words(20)], lane="interactive")], now=0.0)
    assert p.next_batch(0.0).rows[0].owner == "bulk"  # not due yet: a full bulk batch goes
    batch = p.next_batch(WAIT)
    assert batch is not None and batch.rows[0].owner == "query"
