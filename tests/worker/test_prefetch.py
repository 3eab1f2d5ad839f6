"""The prefetch budget: pure arithmetic, no Redis."""

from __future__ import annotations

import pytest

from vecq.worker.prefetch import PREFETCH_SECONDS, PrefetchBudget


def test_starts_at_two_largest_batches_and_grows_to_the_cap_on_a_fast_engine() -> None:
    budget = PrefetchBudget(cap=4096, largest_batch=128)
    assert budget.texts == 256
    budget.batch_done(128, 0.001)  # 128k texts/s
    assert budget.texts == 4096


def test_a_slow_engine_holds_two_seconds_of_work_never_below_the_floor() -> None:
    budget = PrefetchBudget(cap=4096, largest_batch=32)
    for _ in range(20):
        budget.batch_done(64, 0.5)  # 128 texts/s
    assert budget.texts == int(128 * PREFETCH_SECONDS)
    for _ in range(20):
        budget.batch_done(64, 10.0)  # 6.4 texts/s
    assert budget.texts == 64


def test_slow_long_text_batches_do_not_drag_the_rate_below_what_the_engine_sustains() -> None:
    budget = PrefetchBudget(cap=100_000, largest_batch=256)
    for _ in range(10):
        budget.batch_done(256, 0.030)  # short texts, 8.5k texts/s
        budget.batch_done(8, 0.020)  # long documents, 400 texts/s
    # time-weighted, ~5,280 texts/s; an average of the two per-batch rates would be ~4,470
    assert budget.rate == pytest.approx((256 + 8) / (0.030 + 0.020), rel=0.05)
