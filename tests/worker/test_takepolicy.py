"""The take policy: pure decisions on a snapshot of what the worker holds."""

from __future__ import annotations

from vecq.worker.prefetch import PrefetchBudget
from vecq.worker.takepolicy import INTERACTIVE_BUDGET, LOW_WATER_ROWS, Load, Take, TakePolicy

BOTH = ("interactive", "bulk")


def policy(lanes=BOTH, budget: int = 1000) -> TakePolicy:
    return TakePolicy(lanes=lanes, prefetch=PrefetchBudget(cap=budget, largest_batch=8), idle_wait_s=1.0)


def load(held=0, open_=None, interactive=0, rows=0, idle=False) -> Load:
    return Load(held, held if open_ is None else open_, interactive, rows, idle)


def test_it_takes_when_a_quarter_is_free_or_the_engine_runs_dry() -> None:
    p = policy(lanes=("bulk",))  # no interactive side takes
    p.prefetch.texts = 1000
    assert p.next_take(load(held=750, rows=900), ahead=False, ahead_ready=lambda: False, burst=True) == Take(
        250
    )
    assert p.next_take(load(held=751, rows=900), ahead=False, ahead_ready=lambda: False, burst=True) is None
    low = load(held=900, rows=LOW_WATER_ROWS - 1)
    assert p.next_take(low, ahead=False, ahead_ready=lambda: False, burst=True) == Take(100)
    assert p.next_take(load(held=1000, rows=0), ahead=False, ahead_ready=lambda: False, burst=True) is None


def test_it_blocks_only_when_idle_and_not_in_burst_mode() -> None:
    p = policy()
    p.prefetch.texts = 1000
    never = lambda: False  # noqa: E731
    assert p.next_take(load(idle=True), ahead=False, ahead_ready=never, burst=False).block_s == 1.0
    assert p.next_take(load(idle=True), ahead=False, ahead_ready=never, burst=True).block_s == 0.0
    assert p.next_take(load(held=10), ahead=False, ahead_ready=never, burst=False).block_s == 0.0


def test_bulk_filling_the_budget_still_lets_interactive_jobs_in() -> None:
    p = policy()
    p.prefetch.texts = 1000
    full_of_bulk = load(held=1000, interactive=56, rows=900)
    take = p.next_take(full_of_bulk, ahead=False, ahead_ready=lambda: False, burst=True)
    assert take == Take(INTERACTIVE_BUDGET - 56, first_lane_only=True)
    assert policy(lanes=("bulk",)).interactive_room(full_of_bulk) == 0
    half_interactive = load(held=1000, interactive=600, rows=900)
    assert p.interactive_room(half_interactive) == 0  # interactive jobs hold their share already
    writing = load(held=1000, open_=300, interactive=0, rows=300)  # bulk being written back
    assert p.next_take(writing, ahead=False, ahead_ready=lambda: False, burst=True) is None
    seen = Load(1000, 300, 0, 300, False, query_waiting=True)  # ... but the lane watch saw a query
    assert p.next_take(seen, ahead=False, ahead_ready=lambda: False, burst=True) == Take(
        INTERACTIVE_BUDGET, first_lane_only=True
    )


def test_a_take_sent_ahead_is_collected_when_ready_low_or_stopping_and_nothing_new_after_stop() -> None:
    p = policy()
    p.prefetch.texts = 1000
    busy = load(held=900, rows=900)
    assert p.next_take(busy, ahead=True, ahead_ready=lambda: False, burst=True) is None
    assert p.next_take(busy, ahead=True, ahead_ready=lambda: True, burst=True) is not None
    assert p.next_take(load(held=900, rows=10), ahead=True, ahead_ready=lambda: False, burst=True) is not None
    p.stopping = True
    assert p.next_take(busy, ahead=True, ahead_ready=lambda: False, burst=True) is not None
    assert p.next_take(load(idle=True), ahead=False, ahead_ready=lambda: False, burst=False) is None


def test_takes_are_sent_ahead_only_while_jobs_keep_coming() -> None:
    p = policy()
    p.prefetch.texts = 1000
    assert p.take_ahead(load(held=100)) is None  # nothing flowing yet
    p.took(Take(900), texts=450)
    assert p.take_ahead(load(held=100), taken_texts=450) == 450
    p.took(Take(50, first_lane_only=True), texts=0)  # a side take says nothing about the flow
    assert p.flowing
    p.took(Take(900), texts=1)  # a lone request drained the queue: nothing more to send for
    assert not p.flowing
    p.took(Take(900), texts=0)
    assert p.take_ahead(load(held=100)) is None
