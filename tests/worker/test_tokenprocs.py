"""Tokenizer processes (issue 14): the same token ids as tokenizing in process, refusals per job,
a dead child ending the worker loudly, and a worker served through them exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecq.engines import Embedder
from vecq.engines.tokenizer import TextTokenizer
from vecq.worker.planner import NewJob, encode_jobs
from vecq.worker.tokenizing import Tokenizing
from vecq.worker.tokenprocs import TokenizerCrashed, TokenizerProcess

from .conftest import BULK, enqueue, run, vectors_of

TEXTS = ["hello world", "", "a much longer text " * 20, "今天天气怎么样", "x"]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(tiny_bert_dir, max_seq_len=32)


@pytest.mark.parametrize("threads", [1, 2])  # 2: the child's batch calls on a pool
def test_a_child_tokenizes_like_this_process(tokenizer: TextTokenizer, threads: int) -> None:
    jobs = [
        NewJob("a", TEXTS, "bulk"),
        NewJob("long", ["word " * 100], truncate=False),  # over 32 tokens, truncation off
        NewJob("b", TEXTS[::-1], "interactive"),
        NewJob("short", ["a few words"], truncate=False),
    ]
    proc = TokenizerProcess(tokenizer, threads=threads)
    try:
        got = proc.encode_jobs(jobs * 10, now=5.0)  # over SEQUENTIAL_MAX texts: a batch call
    finally:
        proc.close()
    want = encode_jobs(tokenizer, jobs * 10, now=5.0)
    assert got.since == 5.0 and [o for o, _ in got.refused] == ["long"] * 10 == [o for o, _ in want.refused]
    assert got.refused[0][1].startswith("TextTooLong: texts[0]: longer than the model's max of 32")
    owners = [j.owner for j, _ in got.jobs]
    assert owners == [j.owner for j, _ in want.jobs] and sorted(owners) == sorted(["a", "b", "short"] * 10)
    for (_, g), (_, w) in zip(got.jobs, want.jobs, strict=True):
        np.testing.assert_array_equal(g.flat, w.flat)
        np.testing.assert_array_equal(g.lengths, w.lengths)


def test_a_dead_child_fails_its_task_in_one_line(tokenizer: TextTokenizer) -> None:
    proc = TokenizerProcess(tokenizer)
    proc._proc.kill()
    proc._proc.wait()
    with pytest.raises(TokenizerCrashed, match=r"tokenizer process \d+"):
        proc.encode_jobs([NewJob("a", ["hello"])], now=0.0)
    proc.close()


def test_tokenizing_spreads_a_take_over_processes_and_keeps_every_job(tokenizer: TextTokenizer) -> None:
    class Item:  # what Tokenizing reads of a WorkItem
        def __init__(self, k: int, n: int) -> None:
            self.texts = [f"text {k} number {i}" for i in range(n)]
            self.lane, self.truncate, self.query = "bulk", True, None

    items = [Item(k, 300) for k in range(5)] + [Item(99, 2)]
    tok = Tokenizing(tokenizer, processes=2)
    try:
        tok.submit(items, now=1.0)
        tok.submit([Item(7, 1)], now=2.0)  # a query: tokenized at once, on this thread
        got = {}
        while tok:
            for encoded in tok.ready(wait=1.0):
                got.update({job.owner: t for job, t in encoded.jobs})
        assert tok.texts == 0 and len(got) == 7
        for item, t in got.items():
            np.testing.assert_array_equal(t.flat, tokenizer.encode(item.texts).flat)
    finally:
        tok.shutdown(quick=False)


def test_a_worker_with_tokenizer_processes_serves_exactly(redis_conn, make_worker, null_embedder) -> None:
    batches = [[f"job {j} text {i} " * (1 + i % 7) for i in range(1 + j % 40)] for j in range(60)]
    jobs = enqueue(redis_conn, batches[:30]) + enqueue(redis_conn, batches[30:], queue=BULK, lane="bulk")
    emb = Embedder.load(backend="null")
    worker = make_worker(emb, tokenize_processes=2)
    run(worker)
    assert worker.finished_jobs == 60
    for job, texts in zip(jobs, batches, strict=True):
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(texts))


def test_a_query_taken_with_bulk_jobs_is_tokenized_apart_at_once(tokenizer: TextTokenizer) -> None:
    class Item:
        def __init__(self, name: str, lane: str, n: int) -> None:
            self.name, self.lane, self.truncate, self.query = name, lane, True, None
            self.texts = [f"{name} text number {i} " * 20 for i in range(n)]

    query = Item("query", "interactive", 1)
    tok = Tokenizing(tokenizer, processes=1)
    try:
        tok.submit([Item("bulk", "bulk", 3000), query], now=1.0)  # one take, the query last
        first = list(tok.ready())  # no wait: the query was tokenized on this thread
        assert [job.owner for e in first for job, _ in e.jobs] == [query]
        while tok:
            list(tok.ready(wait=1.0))
    finally:
        tok.shutdown(quick=False)


def test_a_finished_task_wakes_the_main_thread(tokenizer: TextTokenizer) -> None:
    """The worker's main thread sleeps on one event: a tokenizing task that finishes must set
    it, or tokenized texts wait for the engine's next result before they are planned."""
    import threading

    class Item:
        def __init__(self, n: int) -> None:
            self.texts, self.lane, self.truncate = [f"text {i} " * 30 for i in range(n)], "bulk", True
            self.query = None

    wake = threading.Event()
    tok = Tokenizing(tokenizer, processes=1, wake=wake)
    try:
        tok.submit([Item(600)], now=0.0)
        assert wake.wait(30.0)
        assert [len(j.texts) for e in tok.ready() for j, _ in e.jobs] == [600]
        wake.clear()
        tok.submit([Item(1)], now=0.0)  # tokenized inline: planned this pass, no wake-up needed
        assert not wake.is_set() and len(list(tok.ready())) == 1
    finally:
        tok.shutdown(quick=False)
